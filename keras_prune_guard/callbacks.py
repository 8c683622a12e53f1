"""`PruningCallback`: the pruning sweep inside `model.fit`, leaving the model pruned to train."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.config import PruneConfig, RunOptions, options_from
from keras_prune_guard.data.checks import labelled_pairs
from keras_prune_guard.model.surgery import find_channel_mask, pruned_copy
from keras_prune_guard.pruning.prune import PruningResult, legacy_data, prune
from keras_prune_guard.pruning.sweep import sweep
from keras_prune_guard.results import SweepResult


class PruningCallback(keras.callbacks.Callback):
    """Prunes the model's masked channels before training, keeping a B' per threshold.

    In `on_train_begin` it ranks the channels of the model's `ChannelMask` by
    mean activation over the clean validation data it is given, lowers the mask
    one channel at a time in that order and measures validation accuracy after
    each channel (itself: it does not read `val_accuracy` from the logs). For
    each threshold X it snapshots B' (see `PruneConfig.keep`), and it stops once
    the largest X is reached (unless `config.full_curve`). It then leaves the
    model masked at `fine_tune_at`, so the epochs of the same `fit` fine-tune
    the pruned network; the mask is a non-trainable weight, so pruned channels
    stay exactly zero through training.

    The state is reset in `on_train_begin`, so one instance can serve several
    `fit` calls. Every argument is checked here, before `fit` starts.

    Args:
        valid: clean labelled validation data, in any form `prune` takes:
            `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches.
        config: the defense's settings (`PruneConfig`; `after` is not used: the
            model already holds its mask). Defaults to `None` (`PruneConfig()`).
        fine_tune_at: the threshold whose B' the model is left at for training.
            Defaults to `None` (the largest threshold).
        poisoned: optional `(x, y_target)` poisoned data, reported only.
            Defaults to `None`.
        filepath: optional template to save each B' as it is chosen, filled with
            `threshold` and `channels` (e.g. "bprime_{threshold:g}.keras").
            Defaults to `None`.
        run: strategy, activation cache, verbosity (`RunOptions`; verbose 1 prints
            one line per threshold). Defaults to `None` (`RunOptions()`).
        **options: `PruneConfig` / `RunOptions` fields one by one.

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import PruneConfig, deepid, insert_channel_mask
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> model = insert_channel_mask(deepid(num_classes=3))  # B, e.g. load_network(...)
    >>> model.compile("adam", "sparse_categorical_crossentropy", run_eagerly=True)
    >>> pruning = PruningCallback((x, y), PruneConfig(thresholds=[2, 4, 10]), verbose=0)
    >>> history = model.fit(x, y, epochs=1, verbose=0, callbacks=[pruning])
    >>> sorted(pruning.snapshots)  # B' for each X, pruned only; `model` trained at X = 10
    [2.0, 4.0, 10.0]
    """

    def __init__(
        self,
        valid,
        config: PruneConfig | None = None,
        *legacy,
        fine_tune_at: float | None = None,
        poisoned=None,
        filepath: str | None = None,
        run: RunOptions | None = None,
        **options,
    ):
        super().__init__()
        valid, config, options = legacy_data("PruningCallback", valid, config, legacy, options)
        self.config, self.run = options_from(config, run, options, "PruningCallback")
        thresholds = self.config.thresholds
        if fine_tune_at is not None and float(fine_tune_at) not in thresholds:
            raise ValueError(
                f"fine_tune_at must be one of the thresholds {list(thresholds)}. "
                f"Received: fine_tune_at={fine_tune_at!r}"
            )
        if filepath is not None:
            _check_template(filepath)

        self.valid = labelled_pairs(valid, "valid")
        self.fine_tune_at = thresholds[-1] if fine_tune_at is None else float(fine_tune_at)
        self.poisoned = poisoned
        self.filepath = filepath
        self.result: SweepResult | None = None
        self.snapshots: dict[float, keras.Model] = {}

    def on_train_begin(self, logs=None):
        self.result, self.snapshots = None, {}
        mask = find_channel_mask(self.model)
        self.result = sweep(self.model, self.valid, self.config, poisoned=self.poisoned,
                            run=_quiet(self.run))
        for t, snap in self.result.snapshots.items():
            self.snapshots[t] = pruned_copy(self.model, snap.pruned_channels)
            if self.filepath:
                path = Path(self.filepath.format(threshold=t, channels=snap.num_pruned))
                with atomic_path(path) as tmp:
                    self.snapshots[t].save(tmp)
            self.run.log(
                f"PruningCallback: X={t:g} -> {snap.num_pruned} of {self.result.channels} "
                f"channels pruned, validation accuracy {snap.valid_accuracy:.2f}% "
                f"(original {self.result.baseline_valid_accuracy:.2f}%)"
            )
        mask.set_pruned(self.result.snapshots[self.fine_tune_at].pruned_channels)


def _quiet(run: RunOptions) -> RunOptions:

    return dataclasses.replace(run, verbose=0)


def _check_template(filepath: str) -> None:
    """Fails now, not after the sweep, on a template that does not format or save."""
    try:
        name = str(filepath).format(threshold=2.0, channels=1)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"filepath must be a template using {{threshold}} and/or {{channels}}, e.g. "
            f"'bprime_{{threshold:g}}.keras'. Received: filepath={filepath!r} ({err})"
        ) from None
    if Path(name).suffix not in (".keras", ".h5"):
        raise ValueError(f"filepath must end in .keras or .h5. Received: filepath={filepath!r}")


__all__ = ["PruningCallback", "PruningResult", "prune"]
