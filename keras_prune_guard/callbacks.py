"""`PruningCallback` and `prune`: the sweep as a Keras callback and as one call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_prune_guard.atomic import atomic_path
from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.ranking import ORDERS
from keras_prune_guard.surgery import find_channel_mask, insert_channel_mask, pruned_copy
from keras_prune_guard.sweep import (
    DEFAULT_THRESHOLDS,
    KEEP_RULES,
    SweepResult,
    check_thresholds,
    sweep,
)


class PruningCallback(keras.callbacks.Callback):
    """Prunes the model's masked channels before training, keeping a B' per threshold.

    In `on_train_begin` it ranks the channels of the model's `ChannelMask` by
    mean activation over the clean validation data it is given, lowers the mask
    one channel at a time in that order and measures validation accuracy after
    each channel (itself: it does not read `val_accuracy` from the logs). For
    each threshold X it snapshots B', the first network at least X points below
    the original accuracy (or, with `keep="last_within"`, the last one still
    within X), and it stops once the largest X is reached. It then leaves the
    model masked at `fine_tune_at`, so the epochs of the same `fit` fine-tune
    the pruned network; the mask is a non-trainable weight, so pruned channels
    stay exactly zero through training.

    The state is reset in `on_train_begin`, so one instance can serve several
    `fit` calls.

    Args:
        x_val: clean validation images, channels-last, in the model's pixel range.
        y_val: their integer labels.
        thresholds: accuracy drops X (percentage points). Defaults to (2, 4, 10).
        order: "ascending" (least active first) or "descending". Defaults to
            "ascending".
        relative: X is a percentage of the original accuracy. Defaults to `False`.
        keep: "first_below" or "last_within". Defaults to "first_below".
        fine_tune_at: the threshold whose B' the model is left at for training.
            Defaults to `None` (the largest threshold).
        poisoned: optional `(x, y_target)` poisoned data, reported only.
            Defaults to `None`.
        filepath: optional template to save each B' as it is chosen, filled with
            `threshold` and `channels` (e.g. "bprime_{threshold:g}.keras").
            Defaults to `None`.
        batch_size: images per forward call. Defaults to 1024.
        verbose: print one line per threshold. Defaults to 1.

    Example:

    >>> model = insert_channel_mask(bad_model)
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> pruning = PruningCallback(x_val, y_val, thresholds=[2, 4, 10])
    >>> model.fit(x_train, y_train, epochs=2, callbacks=[pruning])
    >>> pruning.snapshots[4.0]  # B' for X = 4, pruned only
    """

    def __init__(
        self,
        x_val,
        y_val,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        order: str = "ascending",
        relative: bool = False,
        keep: str = "first_below",
        fine_tune_at: float | None = None,
        poisoned=None,
        filepath: str | None = None,
        batch_size: int = 1024,
        verbose: int = 1,
    ):
        super().__init__()
        self.thresholds = check_thresholds(thresholds)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}. Received: order={order!r}")
        if keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {KEEP_RULES}. Received: keep={keep!r}")
        if fine_tune_at is not None and float(fine_tune_at) not in self.thresholds:
            raise ValueError(
                f"fine_tune_at must be one of the thresholds {self.thresholds}. "
                f"Received: fine_tune_at={fine_tune_at!r}"
            )
        if len(x_val) != len(y_val):
            raise ValueError(
                f"x_val and y_val must have the same length. Received: len(x_val)="
                f"{len(x_val)}, len(y_val)={len(y_val)}"
            )
        self.x_val, self.y_val = x_val, y_val
        self.order, self.relative, self.keep = order, relative, keep
        self.fine_tune_at = self.thresholds[-1] if fine_tune_at is None else float(fine_tune_at)
        self.poisoned = poisoned
        self.filepath = filepath
        self.batch_size = batch_size
        self.verbose = verbose
        self.result: SweepResult | None = None
        self.snapshots: dict[float, keras.Model] = {}

    def on_train_begin(self, logs=None):
        self.result, self.snapshots = None, {}
        mask = find_channel_mask(self.model)
        self.result = sweep(
            self.model,
            (self.x_val, self.y_val),
            thresholds=self.thresholds,
            order=self.order,
            relative=self.relative,
            keep=self.keep,
            poisoned=self.poisoned,
            batch_size=self.batch_size,
        )
        for t, snap in self.result.snapshots.items():
            self.snapshots[t] = pruned_copy(self.model, snap.pruned_channels)
            if self.filepath:
                path = Path(self.filepath.format(threshold=t, channels=snap.channels_pruned))
                with atomic_path(path) as tmp:
                    self.snapshots[t].save(tmp)
            if self.verbose:
                print(
                    f"PruningCallback: X={t:g} -> {snap.channels_pruned} of "
                    f"{self.result.channels} channels pruned, validation accuracy "
                    f"{snap.valid_accuracy:.2f}% (original {self.result.baseline_accuracy:.2f}%)"
                )
        mask.set_pruned(self.result.snapshots[self.fine_tune_at].pruned_channels)


@dataclass
class PruningResult:
    """What `prune` returns: the sweep and one pruned network B' per threshold."""

    sweep: SweepResult
    masked_model: keras.Model
    snapshots: dict[float, keras.Model]


def prune(
    model: keras.Model,
    x_val,
    y_val,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    after: str | None = None,
    order: str = "ascending",
    relative: bool = False,
    keep: str = "first_below",
    poisoned=None,
    full_curve: bool = False,
    batch_size: int = 1024,
    progress=None,
    strategy=None,
    cache_dir=None,
) -> PruningResult:
    """Runs the pruning defense without training.

    Args:
        model: the backdoored network B (a mask is inserted after `after` unless
            the model already has one; B itself is never modified).
        x_val: clean validation images, channels-last, in the model's pixel
            range; or a `tf.data.Dataset` of `(x, y)` batches (such as
            `data.lab_h5_dataset`), read batch by batch, with `y_val=None`.
        y_val: their integer labels (`None` with a dataset).
        thresholds: accuracy drops X (percentage points). Defaults to (2, 4, 10).
        after: layer to mask. Defaults to `None` (the last pooling layer).
        order, relative, keep, poisoned, full_curve, batch_size, progress,
            strategy, cache_dir: as in `sweep` (a `tf.distribute` strategy for
            the passes; a folder for the activation cache file).

    Returns:
        A `PruningResult`; `snapshots[X]` is B' for threshold X, a copy of B
        with a `ChannelMask` after `after`.

    Example:

    >>> result = prune(bad_model, x_valid, y_valid, thresholds=[2, 4, 10])
    >>> b_prime = result.snapshots[10.0]
    """
    has_mask = any(isinstance(layer, ChannelMask) for layer in model.layers)
    masked = model if has_mask else insert_channel_mask(model, after=after)
    result = sweep(
        masked,
        x_val if y_val is None and not hasattr(x_val, "shape") else (x_val, y_val),
        thresholds=thresholds,
        order=order,
        relative=relative,
        keep=keep,
        poisoned=poisoned,
        full_curve=full_curve,
        batch_size=batch_size,
        progress=progress,
        strategy=strategy,
        cache_dir=cache_dir,
    )
    snapshots = {
        t: pruned_copy(masked, snap.pruned_channels, name=f"{model.name}_pruned_{t:g}")
        for t, snap in result.snapshots.items()
    }
    return PruningResult(sweep=result, masked_model=masked, snapshots=snapshots)
