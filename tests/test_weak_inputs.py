"""Issue 23, the WEAK cases: each answered by one line naming the field or file.

A malformed manifest (eval refuses, a re-run recovers), a truncated SavedModel, one
validation image, values no sane run uses, duplicate schedules, unknown keywords, and
summaries (`RepairResult.from_dict`) with impossible figures.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_prune_guard._fs.outputs import (
    COMMIT_DIR,
    KEPT_PREFIX,
    MANIFEST,
    ManifestError,
    check_entry,
    run_folder,
    verify_folder,
)
from keras_prune_guard.config import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_SEED,
    MAX_TIE_TOLERANCE,
    FineTuneConfig,
    PruneConfig,
    RunOptions,
)
from keras_prune_guard.deploy.evaluate import load_model_for_eval
from keras_prune_guard.pruning.steps import few_images_warning
from keras_prune_guard.results import RepairResult, ReportError

# --- a manifest whose `files` is not an object ------------------------------------------------


def commit(out: Path, files: dict[str, str], logged: list | None = None) -> str:
    with run_folder(out, log=(logged if logged is not None else []).append) as run:
        for rel, text in files.items():
            (run.staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (run.staging / rel).write_text(text)
        run.commit()
    return run.run_id


@pytest.mark.parametrize("files", [[], "x", {"bprime_X2.keras": 7}, {"bprime_X2.keras": {}}],
                         ids=["list", "string", "number", "no-size"])
def test_a_malformed_manifest_is_one_line_for_eval_and_a_rerun_recovers(tmp_path, files):
    out = tmp_path / "out"
    commit(out, {"bprime_X2.keras": "old model"})
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] = files
    damaged = json.dumps(manifest)
    (out / MANIFEST).write_text(damaged)
    (out / "notes.txt").write_text("mine")
    for call in (lambda: verify_folder(out), lambda: check_entry(out / "bprime_X2.keras")):
        with pytest.raises(ManifestError, match="not a keras-prune-guard manifest") as caught:
            call()
        assert "\n" not in str(caught.value) and "`files`" in str(caught.value)
    # The next run treats the damaged manifest as foreign: nothing deleted, a copy kept.
    run_id = commit(out, {"bprime_X2.keras": "new model"})
    assert str(verify_folder(out)).startswith(f"complete run {run_id}")
    kept = out / f"{KEPT_PREFIX}{run_id}"
    assert (kept / MANIFEST).read_text() == damaged
    assert (kept / "bprime_X2.keras").read_text() == "old model"  # not ours: kept, not deleted
    assert (out / "notes.txt").read_text() == "mine"


def test_a_damaged_commit_folder_is_kept_and_the_rerun_recovers(tmp_path):
    out = tmp_path / "out"
    commit(out, {"bprime_X2.keras": "old"})
    (out / COMMIT_DIR).mkdir()
    (out / COMMIT_DIR / MANIFEST).write_text(json.dumps({"format": "?", "files": []}))
    (out / COMMIT_DIR / "bprime_X4.keras").write_text("half")
    logged: list[str] = []
    run_id = commit(out, {"bprime_X4.keras": "new"}, logged)
    assert str(verify_folder(out)).startswith(f"complete run {run_id}")
    kept = [p for p in out.iterdir() if p.name.startswith(f"{KEPT_PREFIX}interrupted-")]
    assert len(kept) == 1 and (kept[0] / "bprime_X4.keras").read_text() == "half"
    assert any("not a keras-prune-guard manifest" in line for line in logged)


# --- a truncated SavedModel ------------------------------------------------


def tiny_model(classes: int = 3) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x))


def test_a_truncated_savedmodel_is_one_line(tmp_path):
    folder = tmp_path / "goodnet_X4"
    tiny_model().export(str(folder), verbose=False)
    data = folder / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ValueError, match="TensorFlow could not load it") as caught:
        load_model_for_eval(folder)
    assert "IndexError" in str(caught.value) and "\n" not in str(caught.value)


# --- one validation image ------------------------------------------------


def test_one_validation_image_warns():
    from keras_prune_guard.pruning.prune import prune

    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3)).astype("float32")
    result = prune(model, (x, np.zeros(1, "int64")), thresholds=[2], after="pool", verbose=0)
    assert any("valid holds 1 image: each is 100 points" in w for w in result.sweep.warnings)
    assert few_images_warning(50, (2.0,)) is None  # 2 points per image: fine at X = 2
    assert few_images_warning(49, (2.0, 4.0)) is not None


# --- bounds, duplicate schedules, unknown keywords ------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"learning_rate": 1e9}, "learning_rate must be > 0 and <= 1"),
    ({"schedules": ["cyclic:1e9"]}, "PEAK a learning rate in (0, 1]"),
    ({"epochs": 10**12}, f"epochs must be an integer >= 0 and <= {MAX_EPOCHS:,}"),
    ({"batch_size": 10**18}, f"batch_size must be an integer >= 1 and <= {MAX_BATCH_SIZE:,}"),
    ({"seed": MAX_SEED + 1}, f"seed must be an integer >= 0 and <= {MAX_SEED:,}"),
    ({"schedules": ["cyclic:1e-2", "cyclic:0.01"]}, "schedules must not repeat: 'cyclic:0.01'"),
    ({"epoch": 3}, "FineTuneConfig: unknown keyword argument(s) ['epoch']"),
])
def test_fine_tune_config_bounds(kwargs, message):
    with pytest.raises(ValueError) as caught:
        FineTuneConfig(**kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"tie_tolerance": 1e9}, f"<= {MAX_TIE_TOLERANCE:g}"),
    ({"batch_size": 10**18}, f"<= {MAX_BATCH_SIZE:,}"),
    ({"threshold": 2}, "PruneConfig: unknown keyword argument(s) ['threshold']"),
])
def test_prune_config_bounds(kwargs, message):
    with pytest.raises(ValueError, match="Received") as caught:
        PruneConfig(**kwargs)
    assert message in str(caught.value)


def test_run_options_unknown_keyword_is_named():
    with pytest.raises(ValueError, match=r"RunOptions: unknown keyword argument\(s\) \['verbos'\]"):
        RunOptions(verbos=0)


def test_the_bounds_stand_at_their_limits_and_in_the_help():
    assert FineTuneConfig(learning_rate=MAX_LEARNING_RATE, epochs=MAX_EPOCHS, seed=MAX_SEED,
                          batch_size=MAX_BATCH_SIZE).epochs == MAX_EPOCHS
    assert PruneConfig(tie_tolerance=MAX_TIE_TOLERANCE).tie_tolerance == MAX_TIE_TOLERANCE
    from keras_prune_guard.cli.parser import build_parser

    repair = build_parser()._subparsers._group_actions[0].choices["repair"]
    text = " ".join(repair.format_help().split())
    for bound in (f"at most {MAX_EPOCHS:,}", f"at most {MAX_LEARNING_RATE:g}",
                  f"1 to {MAX_BATCH_SIZE}", f"0 to {MAX_SEED}", f"0 to {MAX_TIE_TOLERANCE:g}",
                  "each schedule once"):
        assert bound in text, bound


# --- summaries with impossible figures ------------------------------------------------

GOOD = {"model": "bd.h5", "layer": "pool_3", "channels": 60, "num_classes": 5,
        "config": {"thresholds": [4]},
        "baseline": {"valid_accuracy": 98.0, "test_accuracy": 97.0, "attack_success": 100.0},
        "rows": [{"threshold": 4, "num_pruned": 40, "valid_accuracy": 93.0,
                  "goodnet": {"test_accuracy": 92.0, "detection_rate": 90.0}}],
        "curve": [{"step": 0, "num_pruned": 0, "valid_accuracy": 98.0}]}


def test_a_good_summary_reads_back():
    result = RepairResult.from_dict(GOOD)
    assert result.rows[0].num_pruned == 40 and result.rows[0].goodnet.detection_rate == 90.0
    assert RepairResult.from_dict(result.to_dict()).to_dict() == result.to_dict()


def test_an_empty_summary_is_refused():
    with pytest.raises(ReportError, match=r"summary\['rows'\]: found none"):
        RepairResult.from_dict({})


@pytest.mark.parametrize("path,value,field", [
    (("baseline", "test_accuracy"), 150, "['baseline']['test_accuracy']"),
    (("baseline", "attack_success"), -3, "['baseline']['attack_success']"),
    (("curve", 0, "valid_accuracy"), math.nan, "['curve'][0]['valid_accuracy']"),
    (("rows", 0, "goodnet", "detection_rate"), math.inf, "['rows'][0]['goodnet']"),
    (("rows", 0, "valid_accuracy"), 100.5, "['rows'][0]['valid_accuracy']"),
    (("rows", 0, "num_pruned"), -5, "['rows'][0]['num_pruned']"),
    (("rows", 0, "num_pruned"), 1e9, "['rows'][0]['num_pruned']"),
    (("rows", 0, "num_pruned"), 4.5, "['rows'][0]['num_pruned']"),
    (("curve", 0, "num_pruned"), 61, "['curve'][0]['num_pruned']"),
])
def test_impossible_figures_are_refused_naming_the_field(path, value, field):
    data = copy.deepcopy(GOOD)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ReportError) as caught:
        RepairResult.from_dict(data)
    assert field in str(caught.value) and repr(value) in str(caught.value)
