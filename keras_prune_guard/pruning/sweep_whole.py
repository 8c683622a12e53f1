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

from keras_prune_guard.config import PruneConfig, RunOptions, options_from
from keras_prune_guard.data.distribute import batches
from keras_prune_guard.model.surgery import find_channel_mask
from keras_prune_guard.pruning.steps import Steps
from keras_prune_guard.results import SweepResult


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


class _WholePredictor:
    """A step predictor (see `steps.Steps`) that re-runs the whole model at every step."""

    def __init__(self, model: _WholeModel, mask, channels: int):
        self.model, self.mask = model, mask
        self.pred = model.classes()  # step 0 the same compiled way as every other step
        self.load = np.full(channels, np.iinfo(np.int64).max // channels)  # one step a call
        self.pruned: list[int] = []
        self.stats = {"image_steps": 0}

    def advance(self, channels: Sequence[int]) -> list[np.ndarray]:
        out = []
        for channel in channels:
            self.pruned.append(int(channel))
            self.mask.set_pruned(self.pruned)
            out.append(self.model.classes())
            self.stats["image_steps"] += len(out[-1])
        return out


def sweep_whole(
    model: keras.Model,
    valid,
    config: PruneConfig | None = None,
    *,
    poisoned=None,
    run: RunOptions | None = None,
    record_predictions: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    **options,
) -> SweepResult:
    """The sweep of `sweep.sweep`, running the whole model at every step.

    Args:
        model: any Keras model holding one `ChannelMask` that its `call`
            applies (e.g. a subclassed model).
        valid, config, poisoned, run, record_predictions, progress, **options: as in
            `sweep.sweep`. Streamed data that is not a `tf.data.Dataset` (a
            generator) is read once and kept in memory, since every step reads it
            again. `run.strategy` must be `None`: this path runs on one device.

    Returns:
        A `SweepResult` with the same meaning as the fast path's; `stats` holds
        `image_steps` (images times steps re-run), `images`,
        `activation_bytes_per_image`, `activation_cache` ("none": nothing is
        cached) and `path` ("whole model").

    Raises:
        ValueError: a bad option; a strategy; unlabelled data; no ChannelMask.

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid, insert_channel_mask
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> masked = insert_channel_mask(deepid(num_classes=3))  # or a subclassed model's mask
    >>> result = sweep_whole(masked, (x, y), thresholds=[4], verbose=0)
    >>> result.stats["path"], result.snapshots[4.0].num_pruned <= result.channels
    ('whole model', True)
    """
    config, run = options_from(config, run, options, "sweep_whole")
    if run.strategy is not None:
        raise ValueError(
            f"Model '{model.name}' cannot be split at its mask, so it is swept whole on one "
            f"device; strategy must be None. Received: strategy={run.strategy!r}"
        )
    mask = find_channel_mask(model)
    saved = mask.mask_values()
    try:
        mask.restore()
        clean = _WholeModel(model, valid, config.batch_size)
        labels, sums, positions, per_image = clean.first_pass(mask)
        if labels is None:
            raise ValueError("valid has no labels: expected (x, y) pairs.")
        steps = Steps(_WholePredictor(clean, mask, len(sums)),
                       _poisoned(model, mask, poisoned, config, len(sums)), labels,
                       sums / positions, config, run, progress,
                       {"activation_bytes_per_image": per_image, "activation_cache": "none",
                        "path": "whole model"})
        return steps.run(model, record_predictions)
    finally:
        mask.mask.assign(saved)


def _poisoned(model, mask, poisoned, config: PruneConfig, channels: int):
    """`(predictor, labels)` for the poisoned data, or None."""
    if poisoned is None:
        return None
    data = _WholeModel(model, poisoned, config.batch_size)
    labels = data.labels()
    if labels is None:
        raise ValueError("poisoned has no labels: expected (x, y_target) pairs.")
    return _WholePredictor(data, mask, channels), labels


def _reiterable(data) -> bool:
    """Arrays, `(x, y)` arrays and datasets can be read once per step; generators cannot."""
    if isinstance(data, tf.data.Dataset | np.ndarray):
        return True
    return isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape")


__all__ = ["sweep_whole"]
