"""The pruning sweep: mask channels one by one and measure accuracy after each.

Only the part of the network after the mask is re-run, on activations cached
once, and at each step only on the images the newly pruned channel touches
(an image on which that channel is zero everywhere gets exactly the same masked
input as before, hence the same prediction). Predictions stay exactly those of
running the whole masked model at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.ranking import activation_means, collect_activations, rank_channels
from keras_prune_guard.surgery import find_channel_mask, masked_layer_name, split_at_mask

#: Which network a threshold keeps: the first one at least X points below the
#: original accuracy (the lab's rule), or the last one still within X points.
KEEP_RULES = ("first_below", "last_within")
DEFAULT_THRESHOLDS = (2.0, 4.0, 10.0)


@dataclass
class Snapshot:
    """What a threshold X selected: `pruned_channels` (in pruning order) and their accuracy."""

    threshold: float
    reached: bool
    channels_pruned: int
    pruned_channels: list[int]
    valid_accuracy: float
    attack_success: float | None = None


@dataclass
class SweepResult:
    """The accuracy curve of a sweep and the snapshot chosen for each threshold.

    Accuracies are percentages (0..100). `curve[k]` describes the network with
    the first `k` channels of `order` pruned (`curve[0]` is the original).
    `predictions[k]` (when recorded) holds every validation image's predicted
    class at step k.
    """

    layer: str
    channels: int
    order: list[int]
    means: list[float]
    ranking: str
    relative: bool
    keep: str
    baseline_accuracy: float
    baseline_attack_success: float | None
    curve: list[dict] = field(default_factory=list)
    snapshots: dict[float, Snapshot] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    predictions: np.ndarray | None = None


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Validates thresholds X (percentage points, or percent of the original).

    Returns:
        The thresholds as floats, sorted ascending.

    Raises:
        ValueError: a threshold is not a number, is <= 0 or >= 100, or repeats.
    """
    if isinstance(thresholds, (int, float)):
        thresholds = [thresholds]
    values = []
    for t in thresholds:
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise ValueError(
                f"thresholds must be numbers between 0 and 100 (exclusive). "
                f"Received: {t!r} in thresholds={list(thresholds)}"
            ) from None
        if not math.isfinite(value) or not 0 < value < 100:
            raise ValueError(
                f"thresholds must be > 0 and < 100 (percentage points of accuracy). "
                f"Received: {t!r} in thresholds={list(thresholds)}"
            )
        values.append(value)
    if not values:
        raise ValueError("thresholds must hold at least one value. Received: []")
    if len(set(values)) != len(values):
        raise ValueError(f"thresholds must not repeat. Received: thresholds={list(thresholds)}")
    return sorted(values)


class _StepPredictor:
    """Keeps every image's predicted class while the mask is lowered step by step."""

    def __init__(self, tail: keras.Model, activations: np.ndarray, batch_size: int):
        self.acts = activations
        self.batch_size = batch_size
        channels = activations.shape[-1]
        spec = tf.TensorSpec((None, *activations.shape[1:]), tf.float32)
        mask_spec = tf.TensorSpec((channels,), tf.float32)

        @tf.function(input_signature=[spec, mask_spec])
        def classify(acts, mask):
            return tf.argmax(tail(acts * mask, training=False), axis=-1, output_type=tf.int32)

        self._classify = classify
        flat = activations.reshape(len(activations), -1, channels)
        # touched[i, c]: channel c is non-zero somewhere in image i.
        self.touched = np.any(flat != 0, axis=1)
        self.pred = self._predict(np.arange(len(activations)), np.ones(channels, "float32"))

    def _predict(self, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype="int32")
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            out[start : start + len(part)] = self._classify(self.acts[part], mask).numpy()
        return out

    def prune(self, channel: int, mask: np.ndarray) -> None:
        rows = np.flatnonzero(self.touched[:, channel])
        if rows.size:
            self.pred[rows] = self._predict(rows, mask)


def _percent(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(pred == labels) * 100.0)


def sweep(
    model: keras.Model,
    valid,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    order: str = "ascending",
    relative: bool = False,
    keep: str = "first_below",
    poisoned=None,
    full_curve: bool = False,
    record_predictions: bool = False,
    batch_size: int = 1024,
    progress: Callable[[int, int, float], None] | None = None,
) -> SweepResult:
    """Ranks the masked channels and prunes them one at a time, measuring accuracy.

    The model's own mask is not changed: the sweep works on cached activations.

    Args:
        model: a functional model holding one `ChannelMask` (all ones, normally).
        valid: clean labelled validation data: `(x, y)` arrays or an iterable of
            `(x, y)` batches; x is channels-last float32 in the model's pixel range.
        thresholds: accuracy drops X that select a snapshot each. Defaults to
            (2, 4, 10).
        order: "ascending" (least active first) or "descending". Defaults to
            "ascending".
        relative: X is a percentage of the original accuracy rather than
            absolute percentage points. Defaults to `False`.
        keep: "first_below" keeps the first network at least X below the
            original; "last_within" the last one still within X. Defaults to
            "first_below".
        poisoned: optional `(x, y_target)` poisoned data; its attack success rate
            is recorded in the curve, never used to decide. Defaults to `None`.
        full_curve: prune every channel instead of stopping once the largest
            threshold is reached. Defaults to `False`.
        record_predictions: keep each step's predicted classes in
            `result.predictions` ((steps + 1, N) int32). Defaults to `False`.
        batch_size: images per forward call. Defaults to 1024.
        progress: called as `progress(step, total, accuracy)` after each step.
            Defaults to `None`.

    Returns:
        A `SweepResult`.

    Example:

    >>> masked = insert_channel_mask(bad_model)
    >>> result = sweep(masked, (x_valid, y_valid), thresholds=[2, 4, 10])
    >>> result.snapshots[4.0].channels_pruned
    48
    """
    thresholds = check_thresholds(thresholds)
    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {KEEP_RULES}. Received: keep={keep!r}")
    find_channel_mask(model)  # a clear error when the model has no mask
    head, tail = split_at_mask(model)
    acts, labels = collect_activations(head, valid, batch_size)
    if labels is None:
        raise ValueError("The validation data has no labels: expected (x, y) pairs.")
    means = activation_means(acts)
    order_arr = rank_channels(means, order)
    channels = acts.shape[-1]

    clean = _StepPredictor(tail, acts, batch_size)
    bad = None
    if poisoned is not None:
        p_acts, p_labels = collect_activations(head, poisoned, batch_size)
        if p_labels is None:
            raise ValueError("The poisoned data has no labels: expected (x, y_target) pairs.")
        bad = (_StepPredictor(tail, p_acts, batch_size), p_labels)

    base = _percent(clean.pred, labels)
    base_asr = _percent(bad[0].pred, bad[1]) if bad else None
    result = SweepResult(
        layer=masked_layer_name(model),
        channels=channels,
        order=[int(c) for c in order_arr],
        means=[float(m) for m in means],
        ranking=order,
        relative=relative,
        keep=keep,
        baseline_accuracy=base,
        baseline_attack_success=base_asr,
    )
    limits = {t: base * (1 - t / 100) if relative else base - t for t in thresholds}
    for t in thresholds:
        if limits[t] < 0:
            result.warnings.append(
                f"threshold {t:g} asks for a drop below 0%: the original accuracy is "
                f"{base:.2f}%, so it can never be reached"
            )
    history = [clean.pred.copy()] if record_predictions else None
    result.curve.append(_point(0, None, channels, base, base_asr))
    mask = np.ones(channels, dtype="float32")
    first_below: dict[float, int] = {}
    total = channels
    for step, channel in enumerate(order_arr, start=1):
        mask[channel] = 0.0
        clean.prune(int(channel), mask)
        acc = _percent(clean.pred, labels)
        asr = None
        if bad:
            bad[0].prune(int(channel), mask)
            asr = _percent(bad[0].pred, bad[1])
        result.curve.append(_point(step, int(channel), channels, acc, asr))
        if history is not None:
            history.append(clean.pred.copy())
        for t in thresholds:
            if t not in first_below and acc <= limits[t] + 1e-9:
                first_below[t] = step
        if progress is not None:
            progress(step, total, acc)
        if not full_curve and len(first_below) == len(thresholds):
            break

    for t in thresholds:
        reached = t in first_below
        if reached:
            step = first_below[t] if keep == "first_below" else first_below[t] - 1
        else:
            step = len(result.curve) - 1
            result.warnings.append(
                f"threshold {t:g}: accuracy never fell {t:g} "
                f"{'percent' if relative else 'points'} below the original {base:.2f}% "
                f"after pruning all {step} channels; the snapshot is the fully pruned network"
            )
        point = result.curve[step]
        result.snapshots[t] = Snapshot(
            threshold=t,
            reached=reached,
            channels_pruned=step,
            pruned_channels=[int(c) for c in order_arr[:step]],
            valid_accuracy=point["valid_accuracy"],
            attack_success=point["attack_success"],
        )
    if history is not None:
        result.predictions = np.stack(history)
    return result


def _point(step: int, channel, channels: int, acc: float, asr) -> dict:
    return {
        "step": step,
        "channel": channel,
        "channels_pruned": step,
        "fraction_pruned": step / channels,
        "valid_accuracy": acc,
        "attack_success": asr,
    }
