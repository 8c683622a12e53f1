"""The calibrated GoodNet: scores, thresholds set on clean images, ROC, export and repair."""

import json

import keras
import numpy as np
import pytest

from keras_prune_guard import FineTuneConfig, GoodNetModel, export_goodnet, fine_tune, prune
from keras_prune_guard.cli import main
from keras_prune_guard.config import DETECTION_SCORES, DetectConfig
from keras_prune_guard.deploy.evaluate import load_model_for_eval
from keras_prune_guard.detect.calibrate import MARGIN, threshold_for, too_few_warning
from keras_prune_guard.detect.roc import measure, roc_curve
from keras_prune_guard.detect.scores import SCORES, score_arrays
from keras_prune_guard.repair import repair
from keras_prune_guard.results import RepairResult


def softmax_rows(rng, count, classes):
    logits = rng.normal(0, 3, (count, classes))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


# --- scores, thresholds, ROC (no network) ---------------------------------------------------


def test_the_scores_match_their_numpy_definitions():
    rng = np.random.default_rng(0)
    bad, repaired = softmax_rows(rng, 50, 7), softmax_rows(rng, 50, 7)
    own = bad.argmax(-1)
    drop = bad.max(-1) - repaired[np.arange(50), own]
    np.testing.assert_allclose(score_arrays("confidence_drop", bad, repaired), drop, atol=1e-6)
    kl = (bad * (np.log(bad + 1e-7) - np.log(repaired + 1e-7))).sum(-1)
    np.testing.assert_allclose(score_arrays("kl", bad, repaired), kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(score_arrays("disagreement", bad, repaired),
                                  (own != repaired.argmax(-1)).astype(float))
    assert np.allclose(score_arrays("kl", bad, bad), 0.0, atol=1e-5)
    assert tuple(SCORES) == DETECTION_SCORES


@pytest.mark.parametrize("false_alarm", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("count", [7, 100, 1001])
def test_the_threshold_flags_at_most_the_budget_and_keeps_a_margin(false_alarm, count):
    rng = np.random.default_rng(count)
    scores = np.round(rng.normal(size=count), 3)  # rounded: ties
    t = threshold_for(scores, false_alarm)
    flagged = np.mean(scores > t)
    assert flagged <= false_alarm
    assert np.abs(scores - t).min() >= MARGIN / 2
    allowed = int(np.floor(false_alarm * count))
    if len(np.unique(scores)) == count:  # no ties: exactly the budget's share is flagged
        assert int((scores > t).sum()) == allowed


def test_the_threshold_refuses_bad_budgets_and_scores():
    with pytest.raises(ValueError, match=r"false_alarm must be a fraction in \(0, 0.5\]"):
        threshold_for([0.1, 0.2], 0.7)
    with pytest.raises(ValueError, match=r"false_alarm must be a fraction"):
        threshold_for([0.1, 0.2], 0)
    with pytest.raises(ValueError, match=r"1 not finite"):
        threshold_for([0.1, np.nan], 0.1)
    assert too_few_warning(299, 0.01) and too_few_warning(300, 0.01) is None


def test_auroc_is_the_chance_a_triggered_score_beats_a_clean_one():
    rng = np.random.default_rng(1)
    clean, triggered = np.round(rng.normal(size=400), 1), np.round(rng.normal(1, size=300), 1)
    pairs = triggered[:, None] - clean[None, :]
    expected = np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0)
    roc = roc_curve(clean, triggered)
    assert roc.auroc == pytest.approx(expected, abs=1e-9)
    assert roc.false_alarm[0] == roc.detection[0] == 0 and roc.false_alarm[-1] == 1
    for budget in (0.01, 0.05):  # the best detection at that false alarm, checked directly
        best = max(np.mean(triggered > t) for t in np.unique(clean)
                   if np.mean(clean > t) <= budget)
        assert roc.detection_at(budget) == pytest.approx(best)


def test_measure_separates_all_triggered_from_those_fooling_b():
    d = measure("goodnet", "kl", 0.5, 0.01, 300, clean_scores=[0.1, 0.6, 0.2, 0.3],
                triggered_scores=[0.9, 0.4, 0.8, 0.1], fooled=[True, True, True, False])
    assert d.false_alarm_rate == 25.0 and d.detection_rate == 50.0
    assert d.detection_rate_fooled == pytest.approx(200 / 3)
    assert len(d.roc) >= 2 and d.roc[0] == [0.0, 0.0]


# --- the calibrated GoodNet -----------------------------------------------------------------


@pytest.fixture(scope="module")
def repaired_pair(gen_dir, gen_clean):
    """B and a B'' that unlearnt part of the backdoor (pruned, then 3 fast epochs)."""
    from keras_prune_guard.model.loading import deepid

    bad = deepid(num_classes=10)
    bad.load_weights(str(gen_dir / "bd_weights.weights.h5"))
    b_prime = prune(bad, gen_clean, thresholds=[4], verbose=0).snapshots[4.0]
    tuned = fine_tune(b_prime, gen_clean, FineTuneConfig(epochs=3, learning_rate=1e-2,
                                                         augment="none"))
    return bad, tuned


def test_a_threshold_flags_exactly_the_inputs_scoring_above_it(repaired_pair, gen_clean,
                                                              gen_sunglasses):
    bad, tuned = repaired_pair
    x = np.concatenate([gen_clean[0], gen_sunglasses[0]])
    for score in DETECTION_SCORES:
        plain = GoodNetModel(bad, tuned, score=score)
        values = plain.detection_scores(x)
        threshold = float(np.median(values)) + 1e-4
        goodnet = GoodNetModel(networks=plain.networks, score=score, threshold=threshold)
        out = goodnet.predict(x, verbose=0)
        flagged = out.argmax(-1) == 10
        np.testing.assert_array_equal(flagged, values > threshold)
        np.testing.assert_allclose(out[~flagged, :10], tuned.predict(x[~flagged], verbose=0),
                                   atol=1e-6)


def test_calibration_keeps_the_clean_false_alarm_within_budget(repaired_pair, gen_clean):
    bad, tuned = repaired_pair
    clean = gen_clean[0]
    goodnet = GoodNetModel(bad, tuned).calibrate(clean, false_alarm=0.1)
    assert goodnet.false_alarm == 0.1 and goodnet.threshold is not None
    flagged = goodnet.predict(clean, verbose=0).argmax(-1) == 10
    assert 0 < flagged.sum() <= 9  # 9 of 90 allowed; the drop is continuous: some are


@pytest.mark.slow
def test_the_threshold_survives_keras_files_and_every_export(repaired_pair, gen_clean,
                                                             gen_sunglasses, tmp_path):
    bad, tuned = repaired_pair
    goodnet = GoodNetModel(bad, tuned, score="kl").calibrate(gen_clean[0], false_alarm=0.05)
    x = np.concatenate([gen_clean[0][:20], gen_sunglasses[0][:20]])
    expected = goodnet.predict(x, verbose=0).argmax(-1)
    goodnet.save(tmp_path / "g.keras")
    loaded = keras.saving.load_model(tmp_path / "g.keras")
    assert (loaded.score, loaded.threshold, loaded.false_alarm) == ("kl", goodnet.threshold,
                                                                    0.05)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0).argmax(-1), expected)
    for name, fmt in (("g_saved", "savedmodel"), ("g.onnx", "onnx"), ("g.tflite", "litert")):
        path = export_goodnet(goodnet, tmp_path / name, fmt, images=x)
        served = load_model_for_eval(path)
        np.testing.assert_array_equal(np.asarray(served(x)).argmax(-1), expected, err_msg=fmt)


def test_goodnet_refuses_unknown_scores_and_bad_thresholds(repaired_pair):
    bad, tuned = repaired_pair
    with pytest.raises(ValueError, match=r"score must be one of .*Received: score='entropy'"):
        GoodNetModel(bad, tuned, score="entropy")
    with pytest.raises(ValueError, match=r"threshold must be a finite number"):
        GoodNetModel(bad, tuned, threshold=float("nan"))


def test_detect_config_checks_every_field():
    assert DetectConfig().false_alarm == 0.01 and DetectConfig().score == "confidence_drop"
    assert DetectConfig.from_config(DetectConfig(false_alarm=0.02).get_config()) == \
        DetectConfig(false_alarm=0.02)
    for bad, match in ((dict(false_alarm=0.6), "false_alarm"), (dict(score="x"), "score"),
                       (dict(strip_blends=0), "strip_blends"), (dict(strip_alpha=1.0),
                                                                "strip_alpha"),
                       (dict(strip="yes"), "strip")):
        with pytest.raises(ValueError, match=match):
            DetectConfig(**bad)


# --- in a repair ------------------------------------------------------------------------------


def test_repair_calibrates_every_goodnet_on_held_out_clean_images(gen_model, gen_clean,
                                                                 gen_sunglasses, tmp_path):
    x, y = gen_clean
    result = repair(gen_model, (x, y), tmp_path / "out", thresholds=[4], test=(x, y),
                    poisoned=gen_sunglasses, fine_tune=FineTuneConfig(epochs=0),
                    detect=DetectConfig(false_alarm=0.1, strip=False), verbose=0)
    row = result.rows[0]
    d = row.detection
    assert d.method == "goodnet" and d.score == "confidence_drop" and d.false_alarm == 0.1
    assert d.calibration_images == 18  # FineTuneConfig().holdout (0.2) of the 90 faces
    assert d.false_alarm_rate == pytest.approx(row.goodnet.false_alarm_rate)
    assert d.detection_rate == pytest.approx(row.goodnet.detection_rate)
    assert 0.0 <= d.auroc <= 1.0 and d.roc[-1] == [1.0, 1.0]
    assert any("held-out clean images set each GoodNet's threshold" in w
               for w in result.warnings)  # 18 images cannot pin down 10%
    saved = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    back = RepairResult.from_dict(saved)
    assert back.rows[0].detection == d and back.detect == DetectConfig(false_alarm=0.1,
                                                                      strip=False)
    goodnet = keras.saving.load_model(tmp_path / "out" / "goodnet_X4.keras")
    assert goodnet.threshold == pytest.approx(d.threshold)


def test_false_alarm_zero_keeps_the_disagreement_rule(gen_model, gen_clean, tmp_path):
    result = repair(gen_model, gen_clean, tmp_path / "out", thresholds=[4], test=gen_clean,
                    fine_tune=FineTuneConfig(epochs=0),
                    detect=DetectConfig(false_alarm=0, strip=False), verbose=0)
    assert result.rows[0].detection is None
    goodnet = keras.saving.load_model(tmp_path / "out" / "goodnet_X4.keras")
    assert goodnet.threshold is None


def test_cli_eval_prints_false_alarm_and_detection_for_a_goodnet(repaired_pair, gen_dir,
                                                                tmp_path, capsys):
    bad, tuned = repaired_pair
    goodnet = GoodNetModel(bad, tuned)
    export_goodnet(goodnet, tmp_path / "goodnet_t.onnx", "onnx")
    clean, bd = str(gen_dir / "clean_faces.h5"), str(gen_dir / "sunglasses_faces.h5")
    assert main(["eval", clean, bd, str(tmp_path / "goodnet_t.onnx")]) == 0
    out = capsys.readouterr().out
    assert "False Alarm Rate (clean images flagged as class 10)" in out
    assert "Detection Rate (poisoned images flagged as class 10)" in out
    tuned.save(tmp_path / "b2.keras")
    assert main(["eval", clean, bd, str(tmp_path / "b2.keras")]) == 0
    assert "False Alarm" not in capsys.readouterr().out


def test_cli_refuses_a_bad_budget_before_any_work(tmp_path, capsys):
    code = main(["repair", "--weights", str(tmp_path / "absent.h5"), "--valid",
                 str(tmp_path / "absent.h5"), "--false-alarm", "0.7"])
    assert code == 2
    assert "false_alarm must be a number in [0, 0.5]" in capsys.readouterr().err


def test_strip_runs_beside_the_goodnets_only_when_asked(gen_model, gen_clean, gen_sunglasses,
                                                       tmp_path):
    assert DetectConfig().strip is False  # 64 forward passes per scored image: opt in
    result = repair(gen_model, gen_clean, tmp_path / "out", thresholds=[4], test=gen_clean,
                    poisoned=gen_sunglasses, fine_tune=FineTuneConfig(epochs=0),
                    detect=DetectConfig(false_alarm=0.1, strip=True, strip_blends=8), verbose=0)
    strip = result.strip
    assert strip.method == "strip" and strip.score == "entropy of 8 blends"
    assert strip.calibration_images == result.rows[0].detection.calibration_images == 18
    assert 0.0 <= strip.auroc <= 1.0 and strip.detection_rate is not None
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "| STRIP (on B) |" in report
