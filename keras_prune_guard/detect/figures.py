"""A repair's detectors measured: each calibrated GoodNet, and STRIP beside them.

Thresholds come from held-out clean images only; the triggered images are used here to
measure, never to set anything.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_prune_guard.config import DetectConfig
from keras_prune_guard.detect.goodnet import GoodNetModel
from keras_prune_guard.detect.roc import measure
from keras_prune_guard.detect.scores import score_arrays
from keras_prune_guard.detect.strip import StripConfig, StripDetector
from keras_prune_guard.results import Detection


def _arrays(data) -> tuple | None:
    """`(x, y)` arrays of `data`, or None for no data or a stream."""
    return data if isinstance(data, tuple) else None


def goodnet_figures(goodnet: GoodNetModel, test, poisoned, calibration_images: int
                    ) -> Detection | None:
    """The calibrated GoodNet's `Detection` on the test and poisoned arrays.

    Args:
        goodnet: a `GoodNetModel` with a threshold (`GoodNetModel.calibrate`).
        test: clean `(x, y)` test arrays (None or a stream: no figures).
        poisoned: triggered `(x, y_target)` arrays, or None.
        calibration_images: how many held-out clean images set the threshold.

    Returns:
        A `Detection`, or None without test arrays or threshold.

    Example:

    >>> goodnet_figures(calibrated, (x_test, y_test), (x_bd, y_bd), 360)  # doctest: +SKIP
    """
    test, poisoned = _arrays(test), _arrays(poisoned)
    if test is None or goodnet.threshold is None:
        return None
    clean = goodnet.detection_scores(test[0])
    triggered = fooled = None
    if poisoned is not None:
        bad, repaired = goodnet.network_outputs(poisoned[0])
        triggered = score_arrays(goodnet.score, bad, repaired)
        fooled = np.argmax(bad, axis=-1) == np.asarray(poisoned[1])
    return measure("goodnet", goodnet.score, goodnet.threshold, goodnet.false_alarm,
                   calibration_images, clean, triggered, fooled)


def strip_figures(model: keras.Model, pool: np.ndarray, calibration: np.ndarray, test,
                  poisoned, config: DetectConfig) -> Detection | None:
    """STRIP on B, its threshold set on `calibration` for `config.false_alarm`, measured.

    Args:
        model: the backdoored network B.
        pool: clean images to blend with (never the calibration ones).
        calibration: held-out clean images that set the threshold.
        test: clean `(x, y)` test arrays (None or a stream: no figures).
        poisoned: triggered `(x, y_target)` arrays, or None.
        config: `DetectConfig` (budget, blends, alpha); blends are capped at the pool.

    Returns:
        A `Detection` with method "strip", or None without test arrays.

    Example:

    >>> config = DetectConfig()
    >>> strip_figures(bad, pool, held_out, (x_t, y_t), (x_p, y_p), config)  # doctest: +SKIP
    """
    test, poisoned = _arrays(test), _arrays(poisoned)
    if test is None or pool is None or not len(pool):
        return None
    settings = StripConfig(blends=min(config.strip_blends, len(pool)), alpha=config.strip_alpha,
                           false_alarm=config.false_alarm)
    detector = StripDetector(model, pool, settings).calibrate(calibration)
    clean = detector.scores(test[0])
    triggered = fooled = None
    if poisoned is not None:
        triggered = detector.scores(poisoned[0])
        classes = np.argmax(model.predict(poisoned[0], batch_size=512, verbose=0), axis=-1)
        fooled = classes == np.asarray(poisoned[1])
    return measure("strip", f"entropy of {settings.blends} blends", detector.threshold,
                   config.false_alarm, len(calibration), clean, triggered, fooled)


def summary(name: str, figures: Detection) -> str:
    """One log line of a detector's figures.

    Example:

    >>> summary("G X=4", Detection("goodnet", "kl", 0.01, 0.2, 360, 0.8, 97.0, 99.0, 0.99))
    'G X=4: threshold 0.2 set on 360 held-out clean images for a 1% false-alarm budget: \
test false alarm 0.80%, detection 97.00% (99.00% of those fooling B), AUROC 0.990'
    """
    text = (f"{name}: threshold {figures.threshold:.6g} set on {figures.calibration_images} "
            f"held-out clean images for a {figures.false_alarm:.0%} false-alarm budget: test "
            f"false alarm {figures.false_alarm_rate:.2f}%")
    if figures.detection_rate is not None:
        text += f", detection {figures.detection_rate:.2f}%"
    if figures.detection_rate_fooled is not None:
        text += f" ({figures.detection_rate_fooled:.2f}% of those fooling B)"
    if figures.auroc is not None:
        text += f", AUROC {figures.auroc:.3f}"
    return text


__all__ = ["goodnet_figures", "strip_figures", "summary"]
