"""ROC curves of a detector: clean inputs are the negatives, triggered ones the positives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_prune_guard.results import Detection

#: Points kept of a ROC curve in a report (the curve is thinned evenly beyond that).
ROC_POINTS = 200


@dataclass(frozen=True)
class Roc:
    """A ROC curve: `false_alarm[i]`, `detection[i]` (fractions) at `thresholds[i]`.

    A point is "flag when score > threshold"; the curve runs from (0, 0) to (1, 1).
    """

    false_alarm: np.ndarray
    detection: np.ndarray
    thresholds: np.ndarray

    @property
    def auroc(self) -> float:
        """The area under the curve, in [0, 1] (0.5: no better than chance)."""
        widths = np.diff(self.false_alarm)
        return float(np.sum(widths * (self.detection[1:] + self.detection[:-1]) / 2.0))

    def detection_at(self, false_alarm: float) -> float:
        """The detection (a fraction) of the best threshold whose false alarm is at most
        `false_alarm`."""
        ok = self.false_alarm <= false_alarm + 1e-12
        return float(self.detection[ok].max())

    def points(self, count: int = ROC_POINTS) -> list[list[float]]:
        """`[[false_alarm, detection], ...]`, at most `count` points, ends kept (for reports)."""
        keep = np.unique(np.linspace(0, len(self.false_alarm) - 1, min(count, len(
            self.false_alarm))).round().astype(int))
        return [[round(float(self.false_alarm[i]), 6), round(float(self.detection[i]), 6)]
                for i in keep]


def roc_curve(clean_scores, triggered_scores) -> Roc:
    """The ROC curve of scores on clean (negative) and triggered (positive) inputs.

    Ties are handled as one step (a threshold never splits equal scores).

    Args:
        clean_scores: scores of clean inputs (at least one).
        triggered_scores: scores of triggered inputs (at least one).

    Returns:
        A `Roc`.

    Example:

    >>> roc = roc_curve([0.1, 0.2, 0.3], [0.25, 0.9])
    >>> round(roc.auroc, 4), roc.detection_at(0.0)
    (0.8333, 0.5)
    """
    neg = np.asarray(clean_scores, "float64").ravel()
    pos = np.asarray(triggered_scores, "float64").ravel()
    if not len(neg) or not len(pos):
        raise ValueError(f"roc_curve needs clean and triggered scores. Received: {len(neg)} "
                         f"clean, {len(pos)} triggered")
    values = np.unique(np.concatenate([neg, pos]))[::-1]  # thresholds, high to low
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    # flag when score >= value  <=>  score > the next lower value
    fa = (len(neg) - np.searchsorted(neg_sorted, values, side="left")) / len(neg)
    det = (len(pos) - np.searchsorted(pos_sorted, values, side="left")) / len(pos)
    below = np.append(values[1:], -np.inf)
    return Roc(false_alarm=np.concatenate([[0.0], fa]), detection=np.concatenate([[0.0], det]),
               thresholds=np.concatenate([[np.inf], below]))


def _percent(flags: np.ndarray) -> float | None:
    return float(np.mean(flags) * 100.0) if len(flags) else None


def measure(method: str, score: str, threshold: float, false_alarm: float,
            calibration_images: int, clean_scores, triggered_scores=None,
            fooled=None) -> Detection:
    """A detector's figures at its calibrated threshold, with its ROC on the test images.

    Args:
        method: "goodnet" or "strip".
        score: the score's name.
        threshold: flag where score > threshold (set on held-out clean images).
        false_alarm: the budget it was set for (a fraction).
        calibration_images: how many clean images set it.
        clean_scores: scores of the clean test images.
        triggered_scores: scores of the triggered images. Defaults to `None`.
        fooled: bool per triggered image: B gives it the attacker's target.
            Defaults to `None`.

    Returns:
        A `results.Detection` (percentages; ROC figures only with triggered scores).

    Example:

    >>> d = measure("goodnet", "kl", 0.5, 0.01, 100, [0.1, 0.2], [0.9, 0.3], [True, False])
    >>> d.false_alarm_rate, d.detection_rate, d.detection_rate_fooled, d.auroc
    (0.0, 50.0, 100.0, 1.0)
    """
    clean = np.asarray(clean_scores, "float64").ravel()
    figures = Detection(method=method, score=score, false_alarm=float(false_alarm),
                        threshold=float(threshold), calibration_images=int(calibration_images),
                        false_alarm_rate=_percent(clean > threshold))
    if triggered_scores is None or not len(clean):
        return figures
    triggered = np.asarray(triggered_scores, "float64").ravel()
    if not len(triggered):
        return figures
    figures.detection_rate = _percent(triggered > threshold)
    if fooled is not None:
        figures.detection_rate_fooled = _percent(triggered[np.asarray(fooled, bool)] > threshold)
    roc = roc_curve(clean, triggered)
    figures.auroc = roc.auroc
    figures.detection_at_1 = roc.detection_at(0.01) * 100.0
    figures.detection_at_5 = roc.detection_at(0.05) * 100.0
    figures.roc = roc.points()
    return figures


__all__ = ["ROC_POINTS", "Roc", "measure", "roc_curve"]
