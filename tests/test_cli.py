"""End to end, as a user runs it: `keras-prune-guard repair`, then `examples/eval.py`.

The commands run in-process through `keras_prune_guard.cli.main` (what the console
script calls); one test runs `examples/eval.py` in a subprocess, and the lab test runs
the console command itself on the real lab files.
"""

import contextlib
import io
import json
import runpy
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import keras_prune_guard  # noqa: F401  (registers ChannelMask for load_model)
from keras_prune_guard.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    """Runs `python *args` in a subprocess from the repository root.

    Args:
        *args: the script and its arguments.
        timeout: seconds before the run is killed.

    Returns:
        The `subprocess.CompletedProcess` (text output captured).
    """
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def cli(*args) -> subprocess.CompletedProcess:
    """Runs `keras-prune-guard *args` in this process, capturing its output.

    Args:
        *args: the command line after `keras-prune-guard`.

    Returns:
        A `CompletedProcess` with the exit code (argparse's exits included), stdout and
        stderr, like a subprocess run.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as done:
            code = done.code
    return subprocess.CompletedProcess(["keras-prune-guard", *args], code, out.getvalue(),
                                       err.getvalue())


def eval_py(*args) -> subprocess.CompletedProcess:
    """Runs `examples/eval.py *args` in this process (as `__main__`), capturing its output.

    Args:
        *args: eval.py's arguments.

    Returns:
        A `CompletedProcess` with its exit code, stdout and stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["eval.py", *(str(a) for a in args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(ROOT / "examples" / "eval.py"), run_name="__main__")
                code = 0
            except SystemExit as done:
                code = done.code
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(["eval.py", *args], code, out.getvalue(), err.getvalue())


def _region(region) -> str:
    return ",".join(str(v) for v in region)


@pytest.fixture(scope="module")
def repaired(gen_dir, gen_trigger_region, tmp_path_factory):
    """`repair` (pruning only: fine-pruning has its own test below) of the generated BadNet."""
    out = tmp_path_factory.mktemp("saved_models")
    done = cli(
        "repair", "--weights", gen_dir / "bd_weights.weights.h5",
        "--valid", gen_dir / "clean_faces.h5",
        "--test", gen_dir / "clean_faces.h5",
        "--poisoned", gen_dir / "sunglasses_faces.h5",
        "--trigger-region", _region(gen_trigger_region), "--fine-tune-epochs", "0",
        "--out", out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_repair_writes_every_model_and_the_report(repaired):
    out, stdout = repaired
    for tag in ("X2", "X4", "X10"):
        assert (out / f"bprime_{tag}.keras").is_file()
        assert (out / f"bprime_{tag}.h5").is_file()
        assert (out / f"goodnet_{tag}" / "saved_model.pb").is_file()
        assert (out / f"goodnet_{tag}.keras").is_file()
    names = {p.name for p in (out / "report").iterdir()}
    assert {"report.md", "report.csv", "report.json", "report.html", "pruning_curve.png",
            "saliency.png"} <= names
    assert not [p for p in out.rglob(".tmp-*")]
    assert "| B (original) |" in stdout


def test_report_numbers_match_the_models(repaired, gen_model, gen_clean):
    out, _ = repaired
    summary = json.loads((out / "report" / "report.json").read_text())
    x, y = gen_clean
    b_accuracy = np.mean(gen_model.predict(x, verbose=0).argmax(-1) == y) * 100
    assert summary["baseline"]["valid_accuracy"] == pytest.approx(b_accuracy)
    pruned = [r["num_pruned"] for r in summary["rows"]]
    assert pruned == sorted(pruned) and 0 < pruned[0] and pruned[-1] <= 60
    for row in summary["rows"]:
        tag = f"X{row['threshold']:g}"
        b_prime = keras.saving.load_model(out / f"bprime_{tag}.keras")
        pred = b_prime.predict(x, verbose=0).argmax(-1)
        assert row["repaired"]["test_accuracy"] == pytest.approx(np.mean(pred == y) * 100)
        # The plain .h5 (mask folded in) loads with no custom objects and agrees.
        plain = keras.saving.load_model(out / f"bprime_{tag}.h5", custom_objects={})
        np.testing.assert_array_equal(plain.predict(x, verbose=0).argmax(-1), pred)
    assert len(summary["curve"]) == pruned[-1] + 1
    assert "saliency_trigger_share" in summary


def test_eval_py_scores_the_goodnet_like_the_lab(repaired, gen_dir):
    """examples/eval.py in its own process, as the lab runs it."""
    out, _ = repaired
    summary = json.loads((out / "report" / "report.json").read_text())
    row = summary["rows"][1]
    done = run("examples/eval.py", str(gen_dir / "clean_faces.h5"),
               str(gen_dir / "sunglasses_faces.h5"), str(out / "goodnet_X4"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ") for line in done.stdout.strip().splitlines())
    assert float(lines["Clean Classification accuracy"]) == pytest.approx(
        row["goodnet"]["test_accuracy"], abs=1e-3)
    assert float(lines["Attack Success Rate"]) == pytest.approx(
        row["goodnet"]["attack_success"], abs=1e-3)


@pytest.mark.parametrize("model_file", ["bprime_X10.h5", "bprime_X10.keras", "goodnet_X10"])
def test_eval_py_takes_every_model_kind(repaired, gen_dir, model_file):
    out, _ = repaired
    summary = json.loads((out / "report" / "report.json").read_text())
    row = summary["rows"][-1]
    expected = row["goodnet" if model_file.startswith("goodnet") else "repaired"]
    done = eval_py(gen_dir / "clean_faces.h5", gen_dir / "sunglasses_faces.h5",
                   out / model_file)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ") for line in done.stdout.strip().splitlines())
    assert float(lines["Clean Classification accuracy"]) == pytest.approx(
        expected["test_accuracy"], abs=1e-3)


def test_eval_py_classifies_single_images(repaired, tmp_path, gen_dir):
    from PIL import Image

    out, _ = repaired
    with h5py.File(gen_dir / "sunglasses_faces.h5") as f:
        face = f["data"][0].transpose(1, 2, 0)
    Image.fromarray(face).save(tmp_path / "face.png")
    done = eval_py(tmp_path / "face.png", "--model", out / "goodnet_X2")
    assert done.returncode == 0, done.stderr[-3000:]
    name, cls = done.stdout.strip().split("\t")
    assert name.endswith("face.png") and 0 <= int(cls) <= 10


def test_bad_arguments_get_clear_errors(gen_dir, tmp_path):
    weights = gen_dir / "bd_weights.weights.h5"
    done = cli("repair", "--weights", weights, "--valid", tmp_path / "missing.h5")
    assert done.returncode == 2
    assert "missing.h5" in done.stderr and "Traceback" not in done.stderr
    done = cli("repair", "--weights", weights, "--valid", gen_dir / "clean_faces.h5",
               "--after", "pool_9")
    assert done.returncode == 2 and "no layer named 'pool_9'" in done.stderr
    done = cli("repair", "--weights", "w.h5", "--valid", "v.h5", "--thresholds", "two")
    assert done.returncode == 2 and "--thresholds takes numbers" in done.stderr


def test_help_explains_every_option():
    done = cli("repair", "--help")
    assert done.returncode == 0
    for option in ("--model", "--weights", "--architecture", "--valid", "--thresholds",
                   "--after", "--order", "--relative", "--input-scale", "--test",
                   "--poisoned", "--out"):
        assert option in done.stdout


@pytest.mark.slow
def test_repair_fine_tunes_on_the_given_file(gen_dir, tmp_path):
    out = tmp_path / "saved"
    done = cli(
        "repair", "--weights", gen_dir / "bd_weights.weights.h5",
        "--valid", gen_dir / "clean_faces.h5",
        "--poisoned", gen_dir / "sunglasses_faces.h5",
        "--thresholds", "4", "--fine-tune-epochs", "2", "--fine-tune-lr", "3e-4",
        "--fine-tune-data", gen_dir / "clean_faces.h5", "--out", out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("bprime_X4.keras", "bprime_ft_X4.keras", "bprime_ft_X4.h5",
                 "goodnet_ft_X4.keras", "goodnet_ft_X4/saved_model.pb"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "report" / "report.json").read_text())
    assert summary["fine_tune_data"] == "clean_faces.h5"
    assert summary["fine_tune"]["epochs"] == 2 and summary["fine_tune"]["learning_rate"] == 3e-4
    tuned = summary["rows"][0]["fine_tuned"]
    assert len(tuned["train_loss"]) == 2 and tuned["train_loss"][1] < tuned["train_loss"][0]
    assert 0 <= tuned["repaired"]["attack_success"] <= 100
    assert "| B''_4 |" in done.stdout and "| G''_4 |" in done.stdout


def test_fine_tune_options_get_clear_errors(gen_dir):
    weights = gen_dir / "bd_weights.weights.h5"
    valid = gen_dir / "clean_faces.h5"
    done = cli("repair", "--weights", weights, "--valid", valid, "--fine-tune-epochs", "-1")
    assert done.returncode == 2 and "--fine-tune-epochs takes a whole number" in done.stderr
    done = cli("repair", "--weights", weights, "--valid", valid, "--fine-tune-epochs", "1",
               "--fine-tune-lr", "0")
    assert done.returncode == 2 and "--fine-tune-lr takes a positive number" in done.stderr
    done = cli("repair", "--weights", weights, "--valid", valid, "--fine-tune-epochs", "0",
               "--fine-tune-data", valid)
    assert done.returncode == 2 and "needs --fine-tune-epochs" in done.stderr
    done = cli("repair", "--weights", weights, "--valid", valid, "--fine-tune-schedules",
               "cyclic:1e-2", "step:1e-3")
    assert done.returncode == 2 and "Received: 'step:1e-3'" in done.stderr
    done = cli("repair", "--weights", weights, "--valid", valid, "--stream")
    assert done.returncode == 2 and "--fine-tune-epochs 0 to prune only" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_explains_the_fine_tune_options():
    done = cli("repair", "--help")
    for option in ("--fine-tune-epochs", "--fine-tune-data", "--fine-tune-lr"):
        assert option in done.stdout
    done = cli("demo", "--help")
    assert done.returncode == 0
    assert "--fine-tune-epochs" in done.stdout and "--fine-tune-data" not in done.stdout


@pytest.mark.slow
def test_saliency_command_reports_the_trigger_share(repaired, gen_dir, gen_trigger_region,
                                                    tmp_path):
    out, _ = repaired
    png = tmp_path / "maps.png"
    done = cli("saliency", out, "--weights", gen_dir / "bd_weights.weights.h5",
               "--clean", gen_dir / "clean_faces.h5",
               "--triggered", gen_dir / "sunglasses_faces.h5",
               "--trigger-region", _region(gen_trigger_region), "--method", "gradcam",
               "--out", png)
    assert done.returncode == 0, done.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in done.stdout.splitlines() if "trigger region" in line]
    assert [line.split(":")[0].strip() for line in lines] == [
        "B", "bprime_X2", "bprime_X4", "bprime_X10"]
    triggered_b = float(lines[0].rsplit("triggered ", 1)[1])
    clean_b = float(lines[0].split("clean ")[1].split(",")[0])
    assert triggered_b > clean_b  # Grad-CAM of B leans on the glasses


def test_lab3_repair_from_the_console_gives_the_labs_figures(csaw_dir, tmp_path):
    """The lab's own figures, from the console command in its own process, then eval.py."""
    out = tmp_path / "saved_models"
    done = run(
        "-m", "keras_prune_guard.cli",
        "repair", "--weights", str(csaw_dir / "lab3_bd_weights.h5"),
        "--valid", str(csaw_dir / "real_clean_faces.h5"),
        "--test", str(csaw_dir / "real_clean_faces.h5"),
        "--poisoned", str(csaw_dir / "real_sunglasses_faces.h5"),
        "--trigger-region", "15,35,0,47", "--fine-tune-epochs", "0", "--out", str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "report" / "report.json").read_text())
    assert summary["baseline"]["valid_accuracy"] == pytest.approx(119 / 120 * 100)
    assert [r["num_pruned"] for r in summary["rows"]] == [43, 45, 48]
    assert len(summary["curve"]) == 49
    done = eval_py(csaw_dir / "real_clean_faces.h5", csaw_dir / "real_sunglasses_faces.h5",
                   out / "goodnet_X10")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Clean Classification accuracy: 89.1667" in done.stdout
