"""Reliability and security (issue 7): untrusted files, bad inputs, kills, determinism.

Where each bad input of the issue's matrix is tested (the message must name the file or
argument, what was found and what was expected):

- missing / unreadable / truncated data files, HDF5 without `data` or `label`, wrong rank,
  image size or channels, labels outside [0, N) or not integers, NaN/inf or out-of-range
  pixels, empty datasets, `data`/`label` length mismatch:
  tests/test_data.py::test_bad_input_raises_a_data_error_naming_file_found_and_expected,
  tests/test_properties.py::test_loader_returns_the_data_or_a_data_error_for_any_dtype,
  and through the CLI here (test_repair_refuses_bad_input_with_a_clean_message).
- missing / unreadable model and weight files: tests/test_models.py::
  test_model_path_problems_name_the_file, test_unreadable_weight_files_name_the_file.
- models that run code on load (Lambda): tests/test_models.py::
  test_legacy_h5_with_a_lambda_is_refused_and_its_code_never_runs,
  test_keras_file_with_a_lambda_is_refused_by_keras_safe_mode; the CLI here.
- thresholds not numbers, <= 0, >= 100, repeated: tests/test_sweep.py::test_bad_thresholds,
  the CLI here.
- a layer that does not exist or has no channel axis: tests/test_surgery.py::
  test_unknown_layer_lists_candidates, test_layer_without_channel_axis_is_refused; the CLI here.
- warnings, not errors (X above the model's own accuracy; X never reached):
  tests/test_sweep.py::test_unreachable_threshold_is_a_warning, and in report.json/report.md
  here (test_unreachable_thresholds_are_warned_in_the_report).
- images that do not fit the model at scoring time: here (test_predict_and_evaluate_*,
  test_served_model_*, test_eval_py_refuses_*).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_prune_guard  # noqa: F401  (registers ChannelMask and GoodNetModel)
from keras_prune_guard._fs import atomic
from keras_prune_guard._fs.atomic import atomic_path, clean_stale
from keras_prune_guard.cli import main as cli_main
from keras_prune_guard.data.files import write_lab_h5
from keras_prune_guard.deploy.evaluate import ServedModel, evaluate, predict_classes

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "keras-prune-guard repair: error: "


def run_python(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def repair_argv(gen_dir, out, *extra):
    return ["-m", "keras_prune_guard.cli", "repair",
            "--weights", str(gen_dir / "bd_weights.weights.h5"),
            "--valid", str(gen_dir / "clean_faces.h5"), "--fine-tune-epochs", "0",
            "--out", str(out), *extra]


def trojan_model(marker: Path) -> keras.Model:
    """A model whose Lambda creates `marker` whenever its Python code runs."""
    path = str(marker)
    inputs = keras.Input((55, 47, 3), name="x")
    x = keras.layers.Lambda(lambda t: (open(path, "w").close(), t)[1], name="evil_lambda")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="d")(x), name="trojan")


def faces(n=3, h=55, w=47, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c)).astype("uint8")


def write_h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for name, values in datasets.items():
            f.create_dataset(name, data=values)
    return path


# --- the CLI gives one clean line, exit 2, for every bad input --------------------------------


def _valid_file(builder):
    """Case: `--valid` gets the file `builder(tmp_path)` writes."""
    return lambda tmp, data: ["--weights", str(data / "bd_weights.weights.h5"),
                              "--valid", str(builder(tmp))]


def _options(*options):
    """Case: the generated BadNet's weights and clean faces, plus `options`."""
    return lambda tmp, data: ["--weights", str(data / "bd_weights.weights.h5"),
                              "--valid", str(data / "clean_faces.h5"), *options]


def _nan_faces(tmp):
    x = faces().transpose(0, 3, 1, 2).astype("float32")
    x[1, 0, 3, 3] = np.nan
    return write_h5(tmp / "nan.h5", data=x, label=np.array([0, 1, 2]))


def _trojan(suffix):
    def build(tmp, data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trojan_model(tmp / "code_ran.txt").save(tmp / f"trojan{suffix}")
        (tmp / "code_ran.txt").unlink()  # building it ran the lambda once
        return ["--model", str(tmp / f"trojan{suffix}"),
                "--valid", str(data / "clean_faces.h5")]
    return build


def _weights(builder):
    return lambda tmp, data: ["--weights", str(builder(tmp)),
                              "--valid", str(data / "clean_faces.h5")]


def _text_file(name):
    def build(tmp):
        (tmp / name).write_text("not HDF5\n")
        return tmp / name
    return build


# (case, argv builder, pieces stderr must hold)
CLI_CASES = [
    ("valid_missing", _valid_file(lambda t: t / "missing.h5"),
     ["missing.h5", "found no such file", "expected an existing HDF5 file"]),
    ("valid_not_hdf5", _valid_file(_text_file("notes.h5")),
     ["notes.h5", "h5py cannot open", "expected a readable HDF5 file"]),
    ("valid_without_label", _valid_file(
        lambda t: write_h5(t / "no_label.h5", data=faces().transpose(0, 3, 1, 2))),
     ["no_label.h5: field `label`", "no such dataset (the file holds ['data'])",
      "expected a dataset named `label`"]),
    ("valid_wrong_size", _valid_file(
        lambda t: (write_lab_h5(t / "small.h5", faces(h=32, w=32), [0, 1, 2]), t / "small.h5")[1]),
     ["small.h5: field `data`", "found images of (H, W, C) (32, 32, 3)",
      "expected (55, 47, 3), the model's input"]),
    ("valid_grey", _valid_file(
        lambda t: (write_lab_h5(t / "grey.h5", faces(c=1), [0, 1, 2]), t / "grey.h5")[1]),
     ["grey.h5", "(55, 47, 1)", "expected (55, 47, 3), the model's input"]),
    ("valid_label_out_of_range", _valid_file(
        lambda t: (write_lab_h5(t / "labels.h5", faces(), [0, 1283, 5]), t / "labels.h5")[1]),
     ["labels.h5: field `label`", "found 1283 at index 1", "expected class labels in [0, 10)"]),
    ("valid_label_fraction", _valid_file(
        lambda t: write_h5(t / "frac.h5", data=faces().transpose(0, 3, 1, 2),
                           label=np.array([0.0, 2.5, 1.0]))),
     ["frac.h5: field `label`", "2.5 at index 1", "expected integer class labels"]),
    ("valid_nan_pixel", _valid_file(_nan_faces),
     ["nan.h5: field `data`", "found nan in image 1", "expected finite pixel values"]),
    ("valid_empty", _valid_file(
        lambda t: write_h5(t / "empty.h5", data=np.zeros((0, 3, 55, 47), "uint8"),
                           label=np.zeros(0, "int64"))),
     ["empty.h5", "0 images", "expected at least one image"]),
    ("valid_lengths", _valid_file(
        lambda t: write_h5(t / "short.h5", data=faces().transpose(0, 3, 1, 2),
                           label=np.array([0, 1]))),
     ["short.h5: field `label`", "2 labels for 3 images", "expected one label per image"]),
    ("thresholds_text", _options("--thresholds", "two"),
     ["--thresholds takes numbers", "Received: 'two'"]),
    ("thresholds_zero", _options("--thresholds", "0", "4"),
     ["thresholds must be > 0 and < 100", "Received: 0.0"]),
    ("thresholds_100", _options("--thresholds", "100"),
     ["thresholds must be > 0 and < 100", "Received: 100.0"]),
    ("thresholds_nan", _options("--thresholds", "nan"),
     ["thresholds must be > 0 and < 100", "Received: nan"]),
    ("thresholds_repeat", _options("--thresholds", "2", "2.0"),
     ["thresholds must not repeat", "[2.0, 2.0]"]),
    ("after_unknown", _options("--after", "pool_9"),
     ["no layer named 'pool_9'", "Layers a channel mask can follow", "'pool_3'"]),
    ("after_no_channel_axis", _options("--after", "fc_1"),
     ["layer 'fc_1'", "no channel axis", "expected (batch, ..., channels)"]),
    ("model_lambda_h5", _trojan(".h5"),
     ["trojan.h5", "refusing to load it", "Lambda layer(s) ['evil_lambda']",
      "--unsafe-deserialization"]),
    ("model_lambda_keras", _trojan(".keras"),
     ["trojan.keras", "['evil_lambda']", "--unsafe-deserialization"]),
    ("model_missing", lambda t, c: ["--model", str(t / "gone.keras"), "--valid", "v.h5"],
     ["gone.keras: no such file", "expected a .keras or .h5 model file"]),
    ("weights_missing", _weights(lambda t: t / "gone_weights.h5"),
     ["gone_weights.h5", "found no such file", "expected a weights-only .h5 file"]),
    ("weights_not_hdf5", _weights(_text_file("weights.h5")),
     ["weights.h5", "not a readable HDF5 file", "expected a weights-only .h5 file"]),
]


@pytest.mark.parametrize("build, pieces", [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_repair_refuses_bad_input_with_a_clean_message(gen_dir, tmp_path, capsys, build,
                                                       pieces):
    out = tmp_path / "out"
    argv = ["repair", *build(tmp_path, gen_dir), "--out", str(out)]
    try:
        code = cli_main(argv)
    except SystemExit as stop:  # argparse's own errors (a value that is not a number)
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert PREFIX in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) > len(PREFIX)
    for piece in pieces:
        assert piece in err, (piece, err)
    assert not out.exists()  # refused before anything was written
    assert not (tmp_path / "code_ran.txt").exists()  # a Lambda's code never ran


@pytest.mark.slow
def test_lambda_model_is_refused_by_the_installed_command(tmp_path):
    """The same refusal through a real process: exit 2, one line, the file's code not run."""
    marker = tmp_path / "code_ran.txt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trojan_model(marker).save(tmp_path / "trojan.h5")
    marker.unlink()
    done = run_python("-m", "keras_prune_guard.cli", "repair", "--model",
                      str(tmp_path / "trojan.h5"), "--valid", str(tmp_path / "v.h5"),
                      "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"{PREFIX}model_path {tmp_path / 'trojan.h5'}: refusing to load it" in done.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unreachable_thresholds_are_warned_in_the_report(gen_dir, tmp_path, capsys):
    out = tmp_path / "out"
    options = _options("--thresholds", "99.5", "--fine-tune-epochs", "0")
    code = cli_main(["repair", *options(tmp_path, gen_dir),
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "report" / "report.json").read_text())
    base = f"{summary['baseline']['valid_accuracy']:.2f}%"
    below_zero = (f"threshold 99.5 asks for a drop below 0%: the original accuracy is {base}, "
                  "so it can never be reached")
    never = (f"threshold 99.5: accuracy never fell 99.5 points below the original {base} after "
             "pruning all 60 channels")
    assert summary["warnings"][0] == below_zero
    assert summary["warnings"][1].startswith(never)
    row = summary["rows"][0]
    assert row["reached"] is False and row["num_pruned"] == 60
    md = (out / "report" / "report.md").read_text()
    assert "B'_99.5 (not reached)" in md and "**Warnings**" in md
    assert f"- {below_zero}" in md and f"- {never}" in md
    assert never in (out / "report" / "report.html").read_text()


# --- determinism: two processes, same inputs, same results -------------------------------------


@pytest.fixture(scope="module")
def two_runs(gen_dir, tmp_path_factory):
    """`repair` run twice, in two processes at once, on the generated BadNet and faces."""
    outs = [tmp_path_factory.mktemp(name) for name in ("run_a", "run_b")]
    logs = [tmp_path_factory.mktemp("logs") / f"{out.name}.stderr" for out in outs]
    procs = []
    for out, log in zip(outs, logs, strict=True):
        with open(log, "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, *repair_argv(gen_dir, out, "--thresholds", "4", "--full-curve",
                                              "--poisoned", str(gen_dir / "sunglasses_faces.h5"))],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err))
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return outs


def _without_paths(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "files"}


def test_two_runs_give_the_same_ranking_curve_and_goodnet_outputs(
    two_runs, gen_clean, gen_sunglasses
):
    a, b = (json.loads((out / "report" / "report.json").read_text()) for out in two_runs)
    assert a["channel_order"] == b["channel_order"] and len(a["channel_order"]) == 60
    assert a["channel_means"] == b["channel_means"]
    assert a["curve"] == b["curve"] and len(a["curve"]) == 61  # every channel: --full-curve
    assert [_without_paths(r) for r in a["rows"]] == [_without_paths(r) for r in b["rows"]]
    assert a["baseline"] == b["baseline"]

    images = np.concatenate([gen_clean[0], gen_sunglasses[0]])
    served = [ServedModel(out / "goodnet_X4") for out in two_runs]
    outputs = [np.asarray(s(images)) for s in served]
    assert outputs[0].shape == (171, 11)
    assert np.array_equal(outputs[0], outputs[1])  # bit-identical, not just close
    assert np.allclose(outputs[0].sum(-1), 1.0, atol=1e-5)  # probabilities over N+1 classes
    # The plain B' files hold the same weights too.
    h5 = [keras.saving.load_model(out / "bprime_X4.h5", compile=False) for out in two_runs]
    for w, v in zip(h5[0].get_weights(), h5[1].get_weights(), strict=True):
        assert np.array_equal(w, v)


# --- a SIGKILL midway loses nothing ------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _top(relative: str) -> str:
    return relative.split(os.sep)[0]


def _loads(path: Path) -> None:
    """Raises unless `path` is a complete model this project writes."""
    if path.is_dir():
        assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir(), path
        served = ServedModel(path)
        assert np.asarray(served(np.zeros((1, 55, 47, 3), "float32"))).shape == (1, 11)
    else:
        keras.saving.load_model(path, compile=False)


def _kill_when(proc: subprocess.Popen, out: Path, ready, timeout=300.0) -> str:
    """Polls `out` every millisecond; SIGKILLs `proc` once `ready(out)` names an entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"repair ended (code {proc.returncode}) before the kill point: "
                        f"{proc.stderr.read()[-2000:]}")
        hit = ready(out)
        if hit:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return hit
        time.sleep(0.001)
    proc.kill()
    pytest.fail("kill point not reached in time")


def _writing(pid: int, name: str, inside: str):
    """Kill point: `.tmp-<pid>-<name>*` exists and its payload has begun (`inside` exists).

    Runs write into their staging folder `.tmp-<pid>-run-*` (keras_prune_guard._fs.outputs), so
    the write is looked for there; the staging folder is the entry returned.
    """
    def ready(out: Path):
        for entry in os.listdir(out):
            if not entry.startswith(f".tmp-{pid}-run-"):
                continue
            try:
                names = os.listdir(out / entry)
            except OSError:  # committed or removed meanwhile
                continue
            if any(n.startswith(f".tmp-{pid}-{name}") and (out / entry / n / inside).exists()
                   for n in names):
                return entry
        return None
    return ready


def _first_write(pid):  # the first file of the second run: bprime_X4.keras, half written
    return _writing(pid, "", "payload.keras")


def _savedmodel_export(pid):  # TensorFlow writing the GoodNet SavedModel's variables
    return _writing(pid, "goodnet_X4-", "payload/variables")


#: The fast tier kills a real run at its first write; the kill inside TensorFlow's SavedModel
#: export is CI's slow tier (with tests/test_outputs.py's kills of real runs).
@pytest.mark.parametrize("kill_point", [
    _first_write, pytest.param(_savedmodel_export, marks=pytest.mark.slow)],
    ids=["first_write", "savedmodel_export"])
def test_sigkill_midway_keeps_the_previous_results(two_runs, gen_dir, tmp_path, kill_point):
    out = tmp_path / "saved_models"
    shutil.copytree(two_runs[0], out)  # a complete previous run (X=4, full curve)
    before = _snapshot(out)
    assert "goodnet_X4/saved_model.pb" in before and "report/report.json" in before

    proc = subprocess.Popen(
        [sys.executable, *repair_argv(gen_dir, out, "--thresholds", "4", "10")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        hit = _kill_when(proc, out, kill_point(proc.pid))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert hit in os.listdir(out)  # killed while that write was in progress

    after = _snapshot(out)
    changed = {_top(rel) for rel, digest in before.items() if after.get(rel) != digest}
    # Nothing of the previous run is missing or half-written: every result entry is the old
    # bytes, or (replaced by the second run before the kill) a complete, loadable model.
    for top in changed:
        assert not top.startswith(".tmp-") and top != "report", top
        _loads(out / top)
    assert "report" not in changed and hit.split("-", 2)[2].split("-")[0] not in changed
    # New entries are a finished result or debris named `.tmp-<pid>-*`, never a result's name.
    new = set(os.listdir(out)) - {_top(rel) for rel in before}
    debris = {n for n in new if n.startswith(f".tmp-{proc.pid}-")}
    for top in new - debris:
        _loads(out / top)
    assert hit in debris
    for folder in out.glob("goodnet_*"):
        if folder.is_dir():
            assert (folder / "saved_model.pb").is_file() and (folder / "variables").is_dir()

    # The next run's clean-up removes exactly that debris and nothing else.
    assert sorted(p.name for p in clean_stale(out)) == sorted(debris)
    assert not list(out.rglob(".tmp-*"))
    assert {rel: d for rel, d in _snapshot(out).items()} == {
        rel: d for rel, d in after.items() if _top(rel) not in debris}


# --- atomic writes of folders ---------------------------------------------------------------


def _write_folder(path: Path, text: str) -> None:
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_text(text)
    (path / "variables" / "variables.index").write_text(text)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_folder_replace_never_leaves_the_final_name_missing(tmp_path):
    probe = [tmp_path / "probe_a", tmp_path / "probe_b"]
    for folder in probe:
        folder.mkdir()
    if not atomic.exchange(*probe):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: the two-rename fallback has a window")
    for folder in probe:
        folder.rmdir()
    final = tmp_path / "goodnet_X4"
    _write_folder(final, "v0")
    missing, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if not (final / "saved_model.pb").exists():
                missing.append(time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(1, 41):
            with atomic_path(final, is_dir=True) as tmp:
                _write_folder(tmp, f"v{i}")
    finally:
        stop.set()
        watcher.join()
    assert not missing
    assert (final / "saved_model.pb").read_text() == "v40"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["goodnet_X4"]


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write_folder(a, "A")
    _write_folder(b, "B")
    if not atomic.exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the fallback is used")
    assert (a / "saved_model.pb").read_text() == "B" and (b / "saved_model.pb").read_text() == "A"


def test_fallback_replace_and_failures_keep_the_previous_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # as on macOS or Windows
    final = tmp_path / "goodnet_X4"
    _write_folder(final, "old")
    with pytest.raises(RuntimeError, match="export failed"):
        with atomic_path(final, is_dir=True) as tmp:
            _write_folder(tmp, "half")
            raise RuntimeError("export failed")
    assert (final / "saved_model.pb").read_text() == "old"
    with atomic_path(final, is_dir=True) as tmp:
        _write_folder(tmp, "new")
    assert (final / "variables" / "variables.index").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["goodnet_X4"]


def test_clean_stale_restores_a_folder_a_killed_writer_moved_aside(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    # Killed between its two renames: the old SavedModel sits aside, the final name is free.
    _write_folder(tmp_path / f".tmp-old-{dead}-goodnet_X4", "previous")
    # Killed between the renames while a newer copy already stands: the aside one is stale.
    _write_folder(tmp_path / "goodnet_X10", "current")
    _write_folder(tmp_path / f".tmp-old-{dead}-goodnet_X10", "older")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / f".tmp-{dead}-report.json-a1b2").mkdir()
    (tmp_path / f".tmp-{dead}-bprime_X4.keras-zz").mkdir()
    (tmp_path / f".tmp-{live}-bprime_X2.keras-yy").mkdir()  # a write still in progress
    (tmp_path / ".tmp-notes.txt").write_text("not ours")  # no pid: left alone

    handled = clean_stale(tmp_path)
    assert sorted(p.name for p in handled) == sorted([
        f".tmp-old-{dead}-goodnet_X4", f".tmp-old-{dead}-goodnet_X10",
        f".tmp-{dead}-report.json-a1b2", f".tmp-{dead}-bprime_X4.keras-zz"])
    assert (tmp_path / "goodnet_X4" / "saved_model.pb").read_text() == "previous"
    assert (tmp_path / "goodnet_X10" / "saved_model.pb").read_text() == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "goodnet_X4", "goodnet_X10", "report", f".tmp-{live}-bprime_X2.keras-yy",
        ".tmp-notes.txt"])
    assert not list((tmp_path / "report").iterdir())
    assert clean_stale(tmp_path / "nowhere") == []


def test_own_writes_in_progress_survive_clean_stale(tmp_path):
    with atomic_path(tmp_path / "report.json") as tmp:
        tmp.write_text("{}")
        assert clean_stale(tmp_path) == []
        assert tmp.exists()
    assert (tmp_path / "report.json").read_text() == "{}"


# --- images that do not fit the model are refused before it runs -------------------------------


def test_predict_and_evaluate_check_the_image_shape(gen_model, gen_clean):
    x, y = gen_clean[0][:4], gen_clean[1][:4]
    wants = "which expects (N, 55, 47, 3) channels-last images"
    cases = [
        (np.zeros((4, 32, 32, 3), "float32"), "images of shape (32, 32, 3)"),
        (x[..., :1], "images of shape (55, 47, 1)"),
        (x[0], "images of shape (47, 3) (rank 3, batch shape (55, 47, 3))"),
        (x.transpose(0, 3, 1, 2), "They look channels-first (N, C, H, W)"),
    ]
    for bad, found in cases:
        with pytest.raises(ValueError) as err:
            predict_classes(gen_model, bad, what="probe.h5")
        assert str(err.value).startswith("probe.h5: ") and found in str(err.value)
        assert wants in str(err.value) and "model 'deepid'" in str(err.value)
    with pytest.raises(ValueError, match=r"^clean images: images of shape \(55, 47, 1\)"):
        evaluate(gen_model, (x[..., :1], y))
    nan = x.copy()
    nan[2, 5, 5, 1] = np.nan
    with pytest.raises(ValueError, match=r"^poisoned images: image 2 holds nan; model 'deepid' "
                                         r"expects finite pixel values"):
        evaluate(gen_model, None, (nan, y))
    # Good images still work.
    assert predict_classes(gen_model, x).tolist() == gen_model.predict(x, verbose=0).argmax(
        -1).tolist()


def test_served_model_checks_shapes_and_its_signature_refuses_them(two_runs, gen_clean):
    served = ServedModel(two_runs[0] / "goodnet_X4")
    assert served.input_shape == (None, 55, 47, 3)
    with pytest.raises(ValueError, match=r"images of shape \(32, 32, 3\) .* expects "
                                         r"\(N, 55, 47, 3\)"):
        predict_classes(served, np.zeros((2, 32, 32, 3), "float32"))
    # Called directly, the SavedModel's own signature refuses them (TensorFlow's error).
    for shape in [(2, 32, 32, 3), (2, 55, 47, 1), (55, 47, 3)]:
        with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
            served._loaded.serve(tf.zeros(shape, tf.float32))
    out = np.asarray(served._loaded.serve(tf.constant(gen_clean[0][:2])))
    assert out.shape == (2, 11) and np.allclose(out.sum(-1), 1.0, atol=1e-5)


def test_eval_py_refuses_an_hdf5_file_of_another_image_size(two_runs, tmp_path):
    small = tmp_path / "small_faces.h5"
    write_lab_h5(small, faces(h=32, w=32), [0, 1, 2])
    done = run_python("examples/eval.py", str(small), str(small),
                      str(two_runs[0] / "goodnet_X4"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert (f"keras-prune-guard eval: error: {small}: field `data`: found images of (H, W, C) "
            "(32, 32, 3); expected (55, 47, 3), the model's input.") in done.stderr
