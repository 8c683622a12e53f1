"""The demo pipeline end to end at a reduced size: benchmark -> BadNet -> repair -> eval.

The DeepID demo runs once, in-process, on the session's benchmark cache where
`demo_bench` already built the same benchmark, so it must say "using cached" and train
nothing; the ResNet demo (slow tier) runs the console command in its own process.
"""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_prune_guard  # noqa: F401  (registers ChannelMask for load_model)
from keras_prune_guard.cli import main
from keras_prune_guard.data.files import load_lab_h5
from keras_prune_guard.deploy.evaluate import ServedModel

ROOT = Path(__file__).resolve().parents[1]
#: Fine-pruning and STRIP at a token size: one epoch of one schedule, 8 blends. The demo
#: still fine-prunes every X and writes and scores B'' and G'' (the default 16 epochs of 3
#: schedules took 4/5 of its time; choosing among schedules is tests/test_choice.py's).
CHEAP = ["--fine-tune-epochs", "1", "--fine-tune-schedules", "cosine:1e-3",
         "--strip", "--strip-blends", "8"]


@pytest.fixture(scope="module")
def demo_run(demo_bench, tmp_path_factory):
    """`demo` at the reduced size, in-process, on the cache `demo_bench` filled (two X)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), "--cache-dir", str(demo_bench.root.parent),
                     "--identities", "6", "--per-identity", "20", "--epochs", "4",
                     "--thresholds", "2", "10", *CHEAP])
    assert code == 0
    return out, demo_bench.root, printed.getvalue()


def test_demo_prints_the_table_and_where_things_went(demo_run):
    out, _, stdout = demo_run
    assert "| B (original) |" in stdout and "| G_10" in stdout
    assert "Demo finished" in stdout and str(out) in stdout
    assert "Pruning only vs fine-pruning" in stdout and "STRIP on B" in stdout
    # It reuses the cached benchmark and BadNet: nothing generated, nothing trained.
    assert "using cached" in stdout
    assert "generating" not in stdout and "training the" not in stdout


def test_demo_table_matches_the_models_own_predictions(demo_run):
    out, data_dir, _ = demo_run
    summary = json.loads((out / "report" / "report.json").read_text())
    x_test, y_test = load_lab_h5(data_dir / "cl" / "test.h5")
    x_bd, y_bd = load_lab_h5(data_dir / "bd" / "bd_test.h5")
    n = summary["num_classes"]
    assert n == 6 and [row["threshold"] for row in summary["rows"]] == [2, 10]
    for row in summary["rows"]:
        tag = f"X{row['threshold']:g}"
        b_prime = keras.saving.load_model(out / f"bprime_{tag}.keras")
        clean = b_prime.predict(x_test, verbose=0).argmax(-1)
        bd = b_prime.predict(x_bd, verbose=0).argmax(-1)
        assert row["repaired"]["test_accuracy"] == pytest.approx(np.mean(clean == y_test) * 100)
        assert row["repaired"]["attack_success"] == pytest.approx(np.mean(bd == y_bd) * 100)
        served = ServedModel(out / f"goodnet_{tag}")
        g_clean = np.asarray(served(x_test)).argmax(-1)
        g_bd = np.asarray(served(x_bd)).argmax(-1)
        assert row["goodnet"]["test_accuracy"] == pytest.approx(np.mean(g_clean == y_test) * 100)
        assert row["goodnet"]["detection_rate"] == pytest.approx(np.mean(g_bd == n) * 100)
        assert row["goodnet"]["false_alarm_rate"] == pytest.approx(np.mean(g_clean == n) * 100)
    for name in ("report.md", "report.html", "pruning_curve.png", "saliency.png"):
        assert (out / "report" / name).stat().st_size > 0


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """`demo --architecture resnet` at a reduced size (the second kind of BadNet).

    One threshold (each costs about 30 s on this network; several per run are the DeepID
    demo's).
    """
    base = tmp_path_factory.mktemp("demo_resnet")
    args = [sys.executable, "-m", "keras_prune_guard.cli", "demo", "--architecture", "resnet",
            "--out", str(base / "out"), "--cache-dir", str(base / "cache"), "--identities",
            "6", "--per-identity", "20", "--epochs", "4", "--thresholds", "10", *CHEAP]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return base, done.stdout


@pytest.mark.slow
def test_demo_resnet_runs_the_defense_end_to_end(resnet_run):
    base, stdout = resnet_run
    assert "| B (original) |" in stdout and "| G_10" in stdout and "Demo finished" in stdout
    out = base / "out"
    summary = json.loads((out / "report" / "report.json").read_text())
    assert summary["layer"] == "avg_pool" and summary["channels"] == 64
    assert "resnet" in summary["model"]
    data_dir = next((base / "cache").glob("faces-*"))
    assert (data_dir / "badnet-resnet-e4.h5").is_file()
    assert json.loads((data_dir / "badnet-resnet-e4.json").read_text())["architecture"] == \
        "resnet"
    x_test, _ = load_lab_h5(data_dir / "cl" / "test.h5")
    n = summary["num_classes"]
    assert [row["threshold"] for row in summary["rows"]] == [10]
    for row in summary["rows"]:
        tag = f"X{row['threshold']:g}"
        b_prime = keras.saving.load_model(out / f"bprime_{tag}.keras")
        plain = keras.saving.load_model(out / f"bprime_{tag}.h5", custom_objects={})
        np.testing.assert_allclose(plain.predict(x_test, verbose=0),
                                   b_prime.predict(x_test, verbose=0), atol=1e-5)
        served = np.asarray(ServedModel(out / f"goodnet_{tag}")(x_test)).argmax(-1)
        assert row["goodnet"]["false_alarm_rate"] == pytest.approx(np.mean(served == n) * 100)
