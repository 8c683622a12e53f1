"""`prune`: the sweep and one pruned network B' per threshold, in one call (no training)."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from keras_prune_guard._compat import deprecated
from keras_prune_guard.config import PruneConfig, RunOptions, options_from
from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.surgery import insert_channel_mask, pruned_copy
from keras_prune_guard.pruning.sweep import sweep
from keras_prune_guard.results import SweepResult


@dataclass
class PruningResult:
    """What `prune` returns: the sweep and one pruned network B' per threshold."""

    sweep: SweepResult
    masked_model: keras.Model
    snapshots: dict[float, keras.Model]


def legacy_data(where: str, valid, config, extra: tuple, options: dict):
    """Maps the 0.1 call `f(model, x_val, y_val[, thresholds])` onto `f(model, valid, config)`.

    Returns:
        `(valid, config, options)`, with a `DeprecationWarning` when the 0.1 form was used.
    """
    if config is not None and not isinstance(config, PruneConfig):
        model = "model, " if where == "prune" else ""
        deprecated(f"{where}({model}x_val, y_val)", f"{where}({model}valid=(x_val, y_val))",
                   stacklevel=4)
        valid, config = (valid, config), None
    if extra:
        if len(extra) > 1 or "thresholds" in options:
            raise TypeError(f"{where}() takes (model, valid, config) and keyword options; "
                            f"received {len(extra)} extra positional argument(s)")
        deprecated(f"{where}(..., thresholds) as a positional argument",
                   f"{where}(..., thresholds=...) or PruneConfig(thresholds=...)", stacklevel=4)
        options = dict(options, thresholds=extra[0])
    return valid, config, options


def prune(
    model: keras.Model,
    valid,
    config: PruneConfig | None = None,
    *legacy,
    poisoned=None,
    run: RunOptions | None = None,
    progress=None,
    **options,
) -> PruningResult:
    """Runs the pruning defense without training: B' for every threshold X.

    Args:
        model: the backdoored network B (a mask is inserted after `config.after`
            unless the model already has one; B itself is never modified).
        valid: clean labelled validation data: `(x, y)` arrays (x channels-last
            in the model's pixel range, y integer labels) or a `tf.data.Dataset`
            of `(x, y)` batches (such as `data.lab_h5_dataset`), read batch by batch.
        config: the defense's settings (`PruneConfig`). Defaults to `None`
            (`PruneConfig()`: X = 2, 4, 10, ascending, first_below, last pooling layer).
        poisoned: optional `(x, y_target)` poisoned data, traced along the curve
            and never used to decide. Defaults to `None`.
        run: strategy, activation cache folder, verbosity (`RunOptions`).
            Defaults to `None` (`RunOptions()`).
        progress: see `sweep`. Defaults to `None`.
        **options: `PruneConfig` / `RunOptions` fields one by one (e.g.
            `thresholds=[2, 4]`); they override `config` and `run`.

    Returns:
        A `PruningResult`; `snapshots[X]` is B' for threshold X, a copy of B
        with a `ChannelMask` after `config.after`.

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import PruneConfig, deepid
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> result = prune(deepid(num_classes=3), (x, y), PruneConfig(thresholds=[2, 4, 10]), verbose=0)
    >>> b_prime = result.snapshots[10.0]  # B' for X = 10: a copy of B, masked after pool_3
    >>> result.sweep.layer, sorted(result.snapshots), b_prime.name
    ('pool_3', [2.0, 4.0, 10.0], 'deepid_pruned_10')
    """
    valid, config, options = legacy_data("prune", valid, config, legacy, options)
    config, run = options_from(config, run, options, "prune")
    has_mask = any(isinstance(layer, ChannelMask) for layer in model.layers)
    masked = model if has_mask else insert_channel_mask(model, after=config.after)
    result = sweep(masked, valid, config, poisoned=poisoned, run=run, progress=progress)
    snapshots = {
        t: pruned_copy(masked, snap.pruned_channels, name=f"{model.name}_pruned_{t:g}")
        for t, snap in result.snapshots.items()
    }
    return PruningResult(sweep=result, masked_model=masked, snapshots=snapshots)


__all__ = ["PruningResult", "prune"]
