"""The pruning sweep for models that cannot be split at their mask: the whole model per step.

A subclassed model that applies its own `ChannelMask` in `call` has no layer
graph to cut, so `sweep.sweep` (through a small hook) hands it here. The
model-agnostic path: one eager pass reads what enters the mask (through
`ChannelMask.probing`) to rank the channels and gives the unpruned
predictions; then for each step it sets the mask and predicts with the whole
model. That is the naive sweep itself, so it is exact by construction, and
costs one full forward pass per step (the fast path costs about 2.5 for all
steps on the lab's network).

The result is the same `SweepResult`, with the same meaning as the fast
path's: baseline, curve, snapshots (same threshold and keep rules), warnings,
and the predictions per step when asked for. The model's mask is left as it
was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.distribute import batches
from keras_prune_guard.ranking import rank_channels
from keras_prune_guard.surgery import find_channel_mask, masked_layer_name
from keras_prune_guard.sweep import (
    DEFAULT_THRESHOLDS,
    KEEP_RULES,
    Snapshot,
    SweepResult,
    _percent,
    _point,
    check_thresholds,
)


class _WholeModel:
    """Predicts classes with the whole model (its mask as currently set), batch by batch."""

    def __init__(self, model: keras.Model, data, batch_size: int):
        self.model = model
        self.batch_size = int(batch_size)
        self.data = data if _reiterable(data) else list(batches(data, self.batch_size))
        self._forward = None

    def first_pass(self, mask) -> tuple[np.ndarray | None, np.ndarray, int, int]:
        """One eager pass reading the mask's input: labels, channel sums, positions, bytes/image."""
        sums, positions, per_image = None, 0, 0
        labels = []

        def observe(acts):
            nonlocal sums, positions, per_image
            flat = acts.reshape(-1, acts.shape[-1])
            batch = flat.sum(axis=0, dtype="float64")
            sums = batch if sums is None else sums + batch
            positions += flat.shape[0]
            per_image = int(np.prod(acts.shape[1:])) * 4

        with mask.probing(observe):
            for x, y in self._batches():
                self.model(x, training=False)
                labels.append(y)
        if sums is None:
            raise ValueError("The validation data is empty: expected at least one image.")
        y_all = None if any(y is None for y in labels) else np.concatenate(labels)
        return y_all, sums, positions, per_image

    def classes(self) -> np.ndarray:
        """Every image's class with the mask as it is now (compiled, traced once)."""
        out = []
        for x, _ in self._batches():
            if self._forward is None:
                spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32)
                self._forward = tf.function(
                    lambda t: tf.argmax(self.model(t, training=False), axis=-1,
                                        output_type=tf.int32),
                    input_signature=[spec],
                )
            out.append(self._forward(x).numpy())
        return np.concatenate(out)

    def labels(self) -> np.ndarray | None:
        """Every image's label, or `None` for unlabelled data."""
        labels = [y for _, y in self._batches()]
        return None if any(y is None for y in labels) else np.concatenate(labels)

    def _batches(self):
        if isinstance(self.data, list):
            return iter(self.data)
        return batches(self.data, self.batch_size)


def sweep_whole(
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
    strategy: tf.distribute.Strategy | None = None,
) -> SweepResult:
    """The sweep of `sweep.sweep`, running the whole model at every step.

    Args:
        model: any Keras model holding one `ChannelMask` that its `call`
            applies (e.g. a subclassed model).
        valid, thresholds, order, relative, keep, poisoned, full_curve,
            record_predictions, batch_size, progress: as in `sweep.sweep`.
            Streamed data that is not a `tf.data.Dataset` (a generator) is
            read once and kept in memory, since every step reads it again.
        strategy: must be `None`: this path runs on one device. Defaults to `None`.

    Returns:
        A `SweepResult`; `stats` holds `image_steps` (images times steps
        re-run), `images`, `activation_bytes_per_image`, `activation_cache`
        ("none": nothing is cached) and `path` ("whole model").

    Raises:
        ValueError: bad thresholds or keep; a strategy; unlabelled data; no ChannelMask.

    Example:

    >>> result = sweep_whole(my_subclassed_model, (x_valid, y_valid), thresholds=[4])
    >>> result.snapshots[4.0].pruned_channels[:3]
    """
    thresholds = check_thresholds(thresholds)
    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {KEEP_RULES}. Received: keep={keep!r}")
    if strategy is not None:
        raise ValueError(
            f"Model '{model.name}' cannot be split at its mask, so it is swept whole on one "
            f"device; strategy must be None. Received: strategy={strategy!r}"
        )
    mask = find_channel_mask(model)
    saved = mask.mask_values()
    try:
        mask.restore()
        return _sweep_whole(model, mask, valid, poisoned, thresholds, order, relative, keep,
                            full_curve, record_predictions, batch_size, progress)
    finally:
        mask.mask.assign(saved)


def _sweep_whole(model, mask, valid, poisoned, thresholds, order, relative, keep, full_curve,
                 record_predictions, batch_size, progress) -> SweepResult:
    clean = _WholeModel(model, valid, batch_size)
    labels, sums, positions, per_image = clean.first_pass(mask)
    if labels is None:
        raise ValueError("The validation data has no labels: expected (x, y) pairs.")
    pred = clean.classes()  # step 0 the same compiled way as every other step
    bad = None
    if poisoned is not None:
        bad = _WholeModel(model, poisoned, batch_size)
        bad_labels = bad.labels()
        if bad_labels is None:
            raise ValueError("The poisoned data has no labels: expected (x, y_target) pairs.")
        bad_pred = bad.classes()
    means = sums / positions
    order_arr = rank_channels(means, order)
    channels = len(means)

    base = _percent(pred, labels)
    base_asr = _percent(bad_pred, bad_labels) if bad else None
    result = SweepResult(
        layer=masked_layer_name(model), channels=channels,
        order=[int(c) for c in order_arr], means=[float(m) for m in means], ranking=order,
        relative=relative, keep=keep, baseline_accuracy=base, baseline_attack_success=base_asr,
    )
    limits = {t: base * (1 - t / 100) if relative else base - t for t in thresholds}
    for t in thresholds:
        if limits[t] < 0:
            result.warnings.append(
                f"threshold {t:g} asks for a drop below 0%: the original accuracy is "
                f"{base:.2f}%, so it can never be reached"
            )
    history = [pred.copy()] if record_predictions else None
    result.curve.append(_point(0, None, channels, base, base_asr))
    first_below: dict[float, int] = {}
    for step in range(1, channels + 1):
        mask.set_pruned(order_arr[:step])
        classes = clean.classes()
        acc = _percent(classes, labels)
        asr = _percent(bad.classes(), bad_labels) if bad else None
        channel = int(order_arr[step - 1])
        result.curve.append(_point(step, channel, channels, acc, asr))
        if history is not None:
            history.append(classes)
        for t in thresholds:
            if t not in first_below and acc <= limits[t] + 1e-9:
                first_below[t] = step
        if progress is not None:
            progress(step, channels, acc)
        if not full_curve and len(first_below) == len(thresholds):
            break
    _snapshots(result, thresholds, first_below, order_arr, base, relative, keep)
    if history is not None:
        result.predictions = np.stack(history)
    steps = len(result.curve) - 1
    result.stats = {"image_steps": steps * len(labels), "images": len(labels),
                    "activation_bytes_per_image": per_image, "activation_cache": "none",
                    "path": "whole model"}
    if bad:
        result.stats["poisoned"] = {"image_steps": steps * len(bad_labels)}
    return result


def _snapshots(result: SweepResult, thresholds, first_below, order_arr, base, relative,
               keep) -> None:
    """The snapshot per threshold, by the rules of `sweep._sweep`."""
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


def _reiterable(data) -> bool:
    """Arrays, `(x, y)` arrays and datasets can be read once per step; generators cannot."""
    if isinstance(data, tf.data.Dataset | np.ndarray):
        return True
    return isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape")


__all__ = ["sweep_whole"]
