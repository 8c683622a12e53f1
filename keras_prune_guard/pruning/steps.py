"""The sweep proper, shared by the fast and the whole-model sweep: prune in ranking order, step
by step, and keep the snapshot of each threshold."""

from __future__ import annotations

import keras
import numpy as np

from keras_prune_guard.config import PruneConfig, RunOptions
from keras_prune_guard.model.surgery import masked_layer_name
from keras_prune_guard.pruning.ranking import rank_channels
from keras_prune_guard.results import CurvePoint, Snapshot, SweepResult


def percent(pred: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy in percent of predicted classes `pred` against `labels`."""
    return float(np.mean(pred == labels) * 100.0)


def few_images_warning(count: int, thresholds) -> str | None:
    """A warning when one validation image is worth more than the smallest threshold X.

    With `count` images each is `100 / count` points of accuracy, so with one image a
    single prediction moves the accuracy by 100 points against X = 2.

    Args:
        count: validation images.
        thresholds: the thresholds X.

    Returns:
        The warning, or `None` when each image is worth at most the smallest X.

    Example:

    >>> few_images_warning(1, (2.0, 4.0))[:34]
    'valid holds 1 image: each is 100 p'
    """
    step = 100.0 / max(int(count), 1)
    smallest = min(thresholds)
    if step <= smallest:
        return None
    return (f"valid holds {count} image{'s' if count != 1 else ''}: each is {step:.3g} points "
            f"of accuracy, more than the smallest threshold X = {smallest:g}, so the "
            f"thresholds cannot be told apart; use at least {int(100 / smallest) + 1} "
            "validation images")


class Steps:
    """The sweep proper: the curve, step by step, and the snapshot of each threshold.

    `clean` (and `bad`, for poisoned data) are step predictors: `pred` holds every
    image's class before any pruning, `advance(channels)` prunes them in turn and
    returns the classes after each, `load[c]` says how many images channel c touches
    (steps share a call while their load is small) and `stats` counts the work.
    """

    def __init__(self, clean, bad, labels: np.ndarray, means: np.ndarray,
                 config: PruneConfig, run: RunOptions, progress, stats: dict):
        self.config, self.options, self.progress = config, run, progress
        self.labels, self.means, self.extra_stats = labels, means, stats
        self.ranking = rank_channels(means, config.order, config.tie_tolerance)
        self.channels = len(means)
        self.clean, self.bad = clean, bad
        self.shown = -1

    def _point(self, step: int, channel, acc: float, asr) -> CurvePoint:
        return CurvePoint(step=step, channel=channel, num_pruned=step,
                          fraction_pruned=step / self.channels, valid_accuracy=acc,
                          attack_success=asr)

    def _report(self, step: int, acc: float) -> None:
        if self.progress is not None:
            self.progress(step, self.channels, acc)
        if step * 10 // self.channels != self.shown:
            self.shown = step * 10 // self.channels
            self.options.log(f"  step {step}/{self.channels}: validation accuracy {acc:.2f}%")

    def run_steps(self, result: SweepResult, limits: dict, history) -> dict[float, int]:
        """Prunes channels in ranking order until every threshold is passed (or all)."""
        config, clean, bad = self.config, self.clean, self.bad
        first_below: dict[float, int] = {}
        load = clean.load
        step, done = 0, False
        while step < self.channels and not done:
            # Several steps per call when each touches few images: fuller batches.
            chunk = [int(self.ranking[step])]
            while step + len(chunk) < self.channels and load[chunk].sum() < config.batch_size:
                chunk.append(int(self.ranking[step + len(chunk)]))
            clean_steps = clean.advance(chunk)
            bad_steps = bad[0].advance(chunk) if bad else None
            for j, channel in enumerate(chunk):
                step += 1
                acc = percent(clean_steps[j], self.labels)
                asr = percent(bad_steps[j], bad[1]) if bad else None
                result.curve.append(self._point(step, channel, acc, asr))
                if history is not None:
                    history.append(clean_steps[j])
                for t in config.thresholds:
                    if t not in first_below and acc <= limits[t] + 1e-9:
                        first_below[t] = step
                self._report(step, acc)
                if not config.full_curve and len(first_below) == len(config.thresholds):
                    done = True
                    break
        return first_below

    def run(self, model: keras.Model, record_predictions: bool) -> SweepResult:
        config, clean, bad = self.config, self.clean, self.bad
        base = percent(clean.pred, self.labels)
        base_asr = percent(bad[0].pred, bad[1]) if bad else None
        result = SweepResult(
            config=config,
            layer=masked_layer_name(model),
            channels=self.channels,
            channel_order=[int(c) for c in self.ranking],
            channel_means=[float(m) for m in self.means],
            baseline_valid_accuracy=base,
            baseline_attack_success=base_asr,
        )
        limits = {t: base * (1 - t / 100) if config.relative else base - t
                  for t in config.thresholds}
        for t in config.thresholds:
            if limits[t] < 0:
                result.warnings.append(
                    f"threshold {t:g} asks for a drop below 0%: the original accuracy is "
                    f"{base:.2f}%, so it can never be reached"
                )
        few = few_images_warning(len(self.labels), config.thresholds)
        if few is not None:
            result.warnings.append(few)
            self.options.log(f"Warning: {few}")
        history = [clean.pred.copy()] if record_predictions else None
        result.curve.append(self._point(0, None, base, base_asr))
        first_below = self.run_steps(result, limits, history)
        for t in config.thresholds:
            result.snapshots[t] = self._snapshot(result, t, first_below.get(t))
        if history is not None:
            result.predictions = np.stack(history)
        result.stats = dict(clean.stats, images=len(self.labels), **self.extra_stats)
        if bad:
            result.stats["poisoned"] = dict(bad[0].stats)
        return result

    def _snapshot(self, result: SweepResult, t: float, below: int | None) -> Snapshot:
        reached = below is not None
        if reached:
            step = below if self.config.keep == "first_below" else below - 1
        else:
            step = len(result.curve) - 1
            result.warnings.append(
                f"threshold {t:g}: accuracy never fell {t:g} "
                f"{'percent' if self.config.relative else 'points'} below the original "
                f"{result.baseline_valid_accuracy:.2f}% after pruning all {step} channels; "
                "the snapshot is the fully pruned network"
            )
        point = result.curve[step]
        return Snapshot(
            threshold=t,
            reached=reached,
            num_pruned=step,
            fraction_pruned=step / self.channels,
            pruned_channels=[int(c) for c in self.ranking[:step]],
            valid_accuracy=point.valid_accuracy,
            attack_success=point.attack_success,
        )
