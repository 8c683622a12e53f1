"""The benchmark matrix, reduced: the attacks x {pruning, fine-pruning} end to end.

`keras-prune-guard benchmark` on a few identities trains one BadNet per attack, repairs
it, re-scores every saved model from its file (the run fails if a figure differs) and
writes the comparison report; these tests check that report against the saved models.
"""

from __future__ import annotations

import json

import pytest

from keras_prune_guard.benchmark.attacks import ATTACKS
from keras_prune_guard.benchmark.matrix import check_against_files
from keras_prune_guard.cli import main
from keras_prune_guard.data.files import load_lab_h5, load_true_labels
from keras_prune_guard.deploy.evaluate import evaluate, load_model_for_eval
from keras_prune_guard.results import RepairResult

#: The matrix trains and repairs one BadNet per attack (about 2 minutes): CI's slow tier.
pytestmark = pytest.mark.slow
#: One threshold, one short fine-tuning schedule and STRIP on 8 blends: the same machinery
#: per attack as the defaults at a third of the cost (several thresholds per run are the
#: demo's, tests/test_demo.py; the choice among several schedules tests/test_choice.py's;
#: STRIP's figures tests/test_strip.py's).
THRESHOLDS = [10.0]
#: Every attack but the lab's sunglasses, whose BadNet the DeepID demo repairs (pruning and
#: fine-pruning) through the same per-attack code (tests/test_demo.py); its test files are
#: the pruning-aware attack's, read here.
MATRIX_ATTACKS = [a for a in ATTACKS if a != "sunglasses"]
REDUCED = ["--identities", "10", "--per-identity", "10", "--epochs", "4",
           "--thresholds", *(f"{t:g}" for t in THRESHOLDS), "--fine-tune-epochs", "2",
           "--fine-tune-schedules", "cosine:1e-3", "--strip-blends", "8",
           "--attacks", *MATRIX_ATTACKS]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("bench") / "out"
    code = main(["benchmark", "--out", str(out), "--benchmark-cache", str(cache), *REDUCED])
    assert code == 0
    saved = json.loads((out / "comparison.json").read_text())
    results = {a: RepairResult.from_dict(saved[a]) for a in MATRIX_ATTACKS}
    return cache, out, results, saved["meta"]


def _test_data(cache, attack):
    root = next(cache.iterdir())
    bd = root / ("bd/bd_test.h5" if attack in ("sunglasses", "pruning-aware")
                 else f"bd-{attack}/bd_test.h5")
    return load_lab_h5(root / "cl/test.h5"), load_lab_h5(bd), load_true_labels(bd)


def test_every_attack_is_repaired_with_both_defenses(matrix):
    _, out, results, meta = matrix
    for attack in MATRIX_ATTACKS:
        result = results[attack]
        assert (out / attack / "manifest.json").is_file()
        assert [r.threshold for r in result.rows] == THRESHOLDS
        for row in result.rows:
            assert row.repaired.test_accuracy is not None and row.fine_tuned is not None
            assert row.fine_tuned.choice is not None  # chosen on clean data, or B' kept
        assert result.baseline.robust_accuracy is not None
        report = (out / attack / "report" / "report.md").read_text()
        assert "Robust accuracy R-Acc (%)" in report and "B'' R-Acc (%)" in report
        assert "## What fine-pruning chose (on clean data only)" in report
    assert "all equal" in meta["Checked"] and "Machine" in meta and "Time" in meta
    for name in ("comparison.md", "comparison.html", "comparison.png"):
        assert (out / name).stat().st_size > 0


def test_table_numbers_equal_what_the_saved_models_predict(matrix):
    cache, out, results, _ = matrix
    table = (out / "comparison.md").read_text()
    for attack in MATRIX_ATTACKS:
        test, poisoned, truth = _test_data(cache, attack)
        row = results[attack].rows[-1]
        tuned = row.fine_tuned
        path = (tuned.files or row.files)["repaired_keras"]
        scores = evaluate(load_model_for_eval(path), test, poisoned, true_labels=truth)
        reported = tuned.repaired if tuned.files else row.repaired
        assert scores.test_accuracy == reported.test_accuracy
        assert scores.attack_success == reported.attack_success
        assert scores.robust_accuracy == reported.robust_accuracy
        line = next(t for t in table.splitlines() if t.startswith(f"| {attack} | B'' X=10"))
        assert f"| {scores.test_accuracy:.2f} | {scores.attack_success:.2f} |" in line


def test_a_report_figure_that_differs_from_its_model_is_caught(matrix):
    cache, _, results, _ = matrix
    test, poisoned, truth = _test_data(cache, "patch")
    result = results["patch"]
    assert check_against_files(result, test, poisoned, truth, result.num_classes, "patch") > 0
    result.rows[0].goodnet.detection_rate += 1.0
    with pytest.raises(ValueError, match=r"patch: the report differs from its saved models: "
                                         r"G X=10 detection_rate"):
        check_against_files(result, test, poisoned, truth, result.num_classes, "patch")
