"""STRIP (detect/strip.py) on the generated BadNet: triggered faces keep the target class
under blending (low entropy, high score), clean faces do not; a threshold from clean faces
keeps to its budget; scores are fixed by each image; bad arguments are named."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_prune_guard.detect.strip import StripConfig, StripDetector, mean_entropy

#: Blends per input in these tests (the paper's 64 costs 4x as much for the same ranking here).
BLENDS = 16
#: Clean faces blended with; the rest are the held-out clean inputs scored.
POOL = 40
#: STRIP is weak on this BadNet: at alpha 0.5 the generated sunglasses keep B on the target
#: in about 2/3 of the blends, and clean faces of the target identity have low entropy too.
#: The share below was 0.70 (blends 16) and 0.74 (blends 40).
MIN_SHARE = 0.6


def _split(gen_clean):
    """(pool, held-out) clean faces, shuffled so the pool holds every identity."""
    x, _ = gen_clean
    x = x[np.random.default_rng(0).permutation(len(x))]
    return x[:POOL], x[POOL:]


@pytest.fixture()
def strip(gen_model, gen_clean) -> StripDetector:
    pool, _ = _split(gen_clean)
    return StripDetector(gen_model, pool, StripConfig(blends=BLENDS, false_alarm=0.1))


def test_triggered_faces_score_above_clean_ones(strip, gen_clean, gen_sunglasses):
    _, clean = _split(gen_clean)
    s_clean, s_bd = strip.scores(clean), strip.scores(gen_sunglasses[0])
    share = float(np.mean(s_bd[:, None] > s_clean[None, :]))
    print(f"STRIP blends={BLENDS}: AUROC-like share {share:.3f}, mean score clean "
          f"{s_clean.mean():.3f}, triggered {s_bd.mean():.3f}")
    assert s_bd.dtype == np.float64 and s_bd.shape == (len(gen_sunglasses[0]),)
    assert s_bd.mean() > s_clean.mean()
    assert share > MIN_SHARE
    assert (s_clean <= 0).all() and (s_clean >= -np.log(10) - 1e-9).all()  # minus entropies


def test_calibrated_threshold_keeps_to_the_clean_budget(strip, gen_clean, gen_sunglasses):
    _, clean = _split(gen_clean)
    half = len(clean) // 2
    assert strip.calibrate(clean[:half]) is strip
    assert strip.calibration_images == half
    assert strip.flags(clean[:half]).mean() <= 0.1
    detected = float(strip.flags(gen_sunglasses[0]).mean())
    print(f"STRIP blends={BLENDS} at false_alarm 0.1: detection {detected:.3f}, held-out "
          f"false alarm {strip.flags(clean[half:]).mean():.3f}")
    assert detected > 0.25  # about half (0.47) at this budget


def test_scores_are_fixed_by_each_image(strip, gen_model, gen_clean, gen_sunglasses):
    x = np.concatenate([_split(gen_clean)[1][:10], gen_sunglasses[0][:10]])
    scores = strip.scores(x)
    assert len(np.unique(scores)) > 10  # not a constant
    np.testing.assert_array_equal(strip.scores(x), scores)
    np.testing.assert_allclose(strip.scores(x[::-1]), scores[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(strip.scores(x[7:8]), scores[7:8], rtol=1e-5, atol=1e-6)
    # chunked one input per pass: the same scores
    one = StripDetector(gen_model, strip.pool, StripConfig(blends=BLENDS, batch_size=1))
    np.testing.assert_allclose(one.scores(x), scores, rtol=1e-5, atol=1e-6)
    other = StripDetector(gen_model, strip.pool, StripConfig(blends=BLENDS, seed=1))
    assert not np.allclose(other.scores(x), scores)  # the seed picks the blends


def test_mean_entropy_averages_each_inputs_blends():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75], [0.25, 0.75]])
    h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    np.testing.assert_allclose(mean_entropy(p, 2), [np.log(2) / 2, h])


@pytest.mark.parametrize(
    "field, value",
    [("blends", 0), ("blends", 1025), ("blends", True), ("alpha", 1.0), ("alpha", 0.0),
     ("false_alarm", 0.0), ("false_alarm", 0.6), ("seed", -1), ("batch_size", 0)],
)
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=rf"{field}.*Received: {field}={value!r}"):
        StripConfig(**{field: value})


def test_bad_pools_and_images_are_named(gen_model, gen_clean):
    x = gen_clean[0]
    with pytest.raises(ValueError, match=r"pool holds 8 clean images.*blends=16"):
        StripDetector(gen_model, x[:8], StripConfig(blends=16))
    with pytest.raises(ValueError, match=r"pool: images of shape \(55, 46, 3\)"):
        StripDetector(gen_model, x[:20, :, :46], StripConfig(blends=16))
    nan = x[:20].copy()
    nan[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"pool: image 3 holds nan"):
        StripDetector(gen_model, nan, StripConfig(blends=16))
    strip = StripDetector(gen_model, x[:20], StripConfig(blends=16))
    with pytest.raises(ValueError, match=r"x: images of shape \(47, 55, 3\)"):
        strip.scores(x[:2].transpose(0, 2, 1, 3))
    with pytest.raises(ValueError, match=r"threshold is None.*calibrate"):
        strip.flags(x[20:22])
    with pytest.raises(ValueError, match=r"config must be a StripConfig"):
        StripDetector(gen_model, x[:20], {"blends": 16})


def test_a_model_without_softmax_is_refused(gen_clean):
    logits = keras.Sequential([keras.Input(gen_clean[0].shape[1:]), keras.layers.Flatten(),
                               keras.layers.Dense(3)])  # logits, no softmax
    strip = StripDetector(logits, gen_clean[0][:20], StripConfig(blends=4))
    with pytest.raises(ValueError, match=r"expects class probabilities.*softmax"):
        strip.scores(gen_clean[0][20:22])
