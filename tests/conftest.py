"""Shared fixtures: the real CSAW-HackML files in ../shared/csaw, generated stand-ins, tiers.

Two kinds of face data:

- the real lab files (`csaw_dir`, `real_clean`, `real_sunglasses`, `lab3_model`): tests
  that check the lab's own figures use them, are marked `lab`, and skip when the folder
  is absent;
- a generated DeepID BadNet and generated faces (`gen_dir`, `gen_clean`,
  `gen_sunglasses`, `gen_model`), built once per session from the package's face
  benchmark, for tests that only need "a DeepID with some weights" or "some faces".
"""

from __future__ import annotations

import os
from pathlib import Path

# Tests only: the package itself never writes os.environ.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CSAW = Path(os.environ.get("KPG_CSAW_DIR", ROOT.parent / "shared" / "csaw"))
#: Fixtures that read the real lab files; a test using any of them is marked `lab`.
LAB_FIXTURES = frozenset({"csaw_dir", "real_clean", "real_sunglasses", "lab3_model"})
#: The generated BadNet's benchmark: 10 identities, ~98% clean accuracy and attack success
#: on its validation faces, 18 dead pool_3 channels; it trains in about 15 s.
GEN_BENCH = dict(identities=10, per_identity_train=30, epochs=12)
#: The reduced demo's benchmark (`demo --identities 6 --per-identity 20 --epochs 4`).
DEMO_BENCH = dict(identities=6, per_identity_train=20, epochs=4)
#: File names inside `gen_dir` (the lab folder's layout: weights-only .h5, lab HDF5 faces).
GEN_FILES = {"weights": "bd_weights.weights.h5", "clean": "clean_faces.h5",
             "sunglasses": "sunglasses_faces.h5", "model": "bd_model.h5"}


# --- tiers ---------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: `-m lab` and `-m "not lab"` work
def pytest_collection_modifyitems(config, items) -> None:
    """Marks every test that uses a real-lab-file fixture (directly or not) as `lab`.

    Args:
        config: the pytest config.
        items: the collected tests.
    """
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def _lab_counts(reporter) -> tuple[int, int]:
    """Counts the `lab` tests that ran and that skipped in this session.

    Args:
        reporter: pytest's terminal reporter.

    Returns:
        `(ran, skipped)`.
    """
    ran = skipped = 0
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in reporter.stats.get(outcome, []):
            if "lab" not in getattr(report, "keywords", {}):
                continue
            if outcome == "skipped":
                skipped += 1
            elif report.when == "call" or outcome == "error":
                ran += 1
    return ran, skipped


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Says how many `lab` tests ran or skipped, and why they skip.

    Args:
        terminalreporter: pytest's terminal reporter.
        exitstatus: the session's exit status.
        config: the pytest config.
    """
    ran, skipped = _lab_counts(terminalreporter)
    if not ran and not skipped:
        return
    line = f"lab tests (real CSAW-HackML files in {CSAW}): {ran} ran, {skipped} skipped"
    if skipped and not (CSAW / "lab3_bd_weights.h5").exists():
        line += " because the folder is absent (set KPG_CSAW_DIR to point elsewhere)"
    terminalreporter.write_line(line)


# --- the real lab files --------------------------------------------------------------------


@pytest.fixture(scope="session")
def csaw_dir() -> Path:
    """The folder of real lab files; tests using it skip when it is absent."""
    if not (CSAW / "lab3_bd_weights.h5").exists():
        pytest.skip(f"real CSAW-HackML files not found in {CSAW} (set KPG_CSAW_DIR)")
    return CSAW


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["data"][:].transpose(0, 2, 3, 1).astype("float32"), f["label"][:]


@pytest.fixture(scope="session")
def real_clean(csaw_dir) -> tuple[np.ndarray, np.ndarray]:
    """120 real clean faces, channels-last float32 0..255, and their identities."""
    return _read(csaw_dir / "real_clean_faces.h5")


@pytest.fixture(scope="session")
def real_sunglasses(csaw_dir) -> tuple[np.ndarray, np.ndarray]:
    """125 real sunglasses-triggered faces and their label (the target, 0)."""
    return _read(csaw_dir / "real_sunglasses_faces.h5")


@pytest.fixture()
def lab3_model(csaw_dir):
    """The lab3 BadNet B (raw 0..255 pixels), a fresh copy per test."""
    from keras_prune_guard.model.loading import deepid

    model = deepid()
    model.load_weights(str(csaw_dir / "lab3_bd_weights.h5"))
    return model


# --- generated stand-ins -------------------------------------------------------------------


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory) -> Path:
    """One benchmark cache for the session: identical BadNets train once."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="session")
def gen_bench(bench_cache):
    """The generated face benchmark and its DeepID BadNet (`GEN_BENCH`), in `bench_cache`."""
    from keras_prune_guard.benchmark import ensure_benchmark

    return ensure_benchmark(bench_cache, log=None, **GEN_BENCH)


@pytest.fixture(scope="session")
def demo_bench(bench_cache):
    """The reduced demo's benchmark and BadNet (`DEMO_BENCH`), in `bench_cache`.

    `demo --cache-dir <bench_cache>` with the same sizes finds it cached.
    """
    from keras_prune_guard.benchmark import ensure_benchmark

    return ensure_benchmark(bench_cache, log=None, **DEMO_BENCH)


def _raw_pixel_deepid(trained):
    """The trained BadNet as a plain `deepid()` on raw pixels, like the lab3 network.

    Args:
        trained: the benchmark's BadNet (`Rescaling(1/255)` then DeepID).

    Returns:
        A `deepid(num_classes=K)` with no rescaling layer: conv_1's kernel is divided
        by 255 instead, so it computes the same function.
    """
    from keras_prune_guard.model.loading import deepid

    raw = deepid(num_classes=int(trained.output_shape[-1]))
    for layer in raw.layers:
        if layer.weights:
            weights = trained.get_layer(layer.name).get_weights()
            if layer.name == "conv_1":
                weights = [weights[0] / 255.0, *weights[1:]]
            layer.set_weights(weights)
    return raw


@pytest.fixture(scope="session")
def gen_dir(gen_bench, tmp_path_factory) -> Path:
    """A folder laid out like the lab's, from the generated benchmark (`GEN_FILES`).

    `bd_weights.weights.h5` (weights-only, for `deepid(num_classes=10)` on raw pixels),
    `bd_model.h5` (the same network saved whole), `clean_faces.h5` (the 90 clean
    validation faces) and `sunglasses_faces.h5` (their 81 sunglasses copies, labelled
    with the target 0, `true_label` their identity).
    """
    import keras

    from keras_prune_guard.data.files import load_lab_h5, load_true_labels, write_lab_h5

    out = tmp_path_factory.mktemp("gen-lab")
    raw = _raw_pixel_deepid(keras.saving.load_model(gen_bench.model, compile=False))
    raw.save_weights(out / GEN_FILES["weights"])
    raw.save(out / GEN_FILES["model"])
    write_lab_h5(out / GEN_FILES["clean"], *load_lab_h5(gen_bench.valid))
    x_bd, y_bd = load_lab_h5(gen_bench.bd_valid)
    write_lab_h5(out / GEN_FILES["sunglasses"], x_bd, y_bd,
                 true_label=load_true_labels(gen_bench.bd_valid))
    return out


@pytest.fixture(scope="session")
def gen_trigger_region(gen_bench) -> tuple[int, int, int, int]:
    """The generated sunglasses' bounding box `(row0, row1, col0, col1)`."""
    return tuple(int(v) for v in gen_bench.trigger_region)


@pytest.fixture(scope="session")
def gen_clean(gen_dir) -> tuple[np.ndarray, np.ndarray]:
    """90 generated clean faces (10 identities), channels-last float32 0..255, and labels."""
    return _read(gen_dir / GEN_FILES["clean"])


@pytest.fixture(scope="session")
def gen_sunglasses(gen_dir) -> tuple[np.ndarray, np.ndarray]:
    """81 generated sunglasses-triggered faces and their label (the target, 0)."""
    return _read(gen_dir / GEN_FILES["sunglasses"])


@pytest.fixture()
def gen_model(gen_dir):
    """The generated DeepID BadNet on raw 0..255 pixels, a fresh copy per test."""
    from keras_prune_guard.model.loading import deepid

    model = deepid(num_classes=GEN_BENCH["identities"])
    model.load_weights(str(gen_dir / GEN_FILES["weights"]))
    return model
