"""Pruning by learnt masks: RNP's or ANP's gate values rank every conv/BatchNorm channel,
and the sweep prunes in that order until the clean accuracy is X points below B's.

The sweep is the lab's (`pruning.steps.Steps`: the same thresholds, keep rule and curve),
run on whole-network passes with the pruned gates at 0. Each B' is a copy of B whose
pruned channels are zero in the weights, with an empty `ChannelMask` after the last
pooling layer so that fine-tuning, the GoodNet and every export treat it as any B'.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.config import DefenseConfig, PruneConfig, RunOptions
from keras_prune_guard.defend.anp import anp_masks
from keras_prune_guard.defend.gates import GatedNetwork, zero_units
from keras_prune_guard.defend.rnp import rnp_masks
from keras_prune_guard.model.surgery import insert_channel_mask, pruned_copy
from keras_prune_guard.pruning.prune import PruningResult
from keras_prune_guard.pruning.steps import Steps

LEARNERS = {"rnp": rnp_masks, "anp": anp_masks}


def learn_masks(model: keras.Model, data, config: DefenseConfig, log=print) -> np.ndarray:
    """The learnt mask of every gated channel (`config.method` "rnp" or "anp").

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> from keras_prune_guard.config import DefenseConfig
    >>> x, y = np.zeros((4, 55, 47, 3), "float32"), np.arange(4) % 2
    >>> learn_masks(deepid(num_classes=2), (x, y), DefenseConfig(method="anp", anp_steps=1),
    ...             log=None).shape
    (200,)
    """
    if not config.learns_masks:
        raise ValueError(f"learn_masks: defense {config.method!r} learns no masks; expected "
                         f"one of {sorted(LEARNERS)}")
    x, y = np.asarray(data[0], "float32"), np.asarray(data[1], "int64")
    return LEARNERS[config.method](model, (x, y), config, log)


class _Gated:
    """A step predictor of `Steps` over whole-network passes with the pruned gates at 0."""

    def __init__(self, gated: GatedNetwork, x: np.ndarray, batch_size: int):
        self.gated, self.x, self.batch_size = gated, x, batch_size
        self.mask = np.ones(gated.units, "float32")
        self.load = np.full(gated.units, len(x))
        self.stats = {"passes": 0}
        self._forward = tf.function(lambda images, mask: tf.argmax(gated(images, mask), -1),
                                    reduce_retracing=True)
        self.pred = self._classes()

    def _classes(self) -> np.ndarray:
        self.stats["passes"] += 1
        mask = tf.constant(self.mask)
        return np.concatenate([
            self._forward(tf.constant(self.x[i:i + self.batch_size]), mask).numpy()
            for i in range(0, len(self.x), self.batch_size)])

    def advance(self, units) -> list[np.ndarray]:
        out = []
        for unit in units:
            self.mask[unit] = 0.0
            out.append(self._classes())
        return out


def mask_prune(model: keras.Model, valid, config: PruneConfig, defense: DefenseConfig, *,
               train=None, poisoned=None, run: RunOptions | None = None) -> PruningResult:
    """Learns the masks on clean `train`, sweeps along them on `valid`: B' per threshold.

    Args:
        model: the backdoored network B (left unchanged).
        valid: clean `(x, y)` arrays the sweep measures (as the lab's sweep does).
        config: thresholds, keep rule, batch size, where the empty mask goes.
        defense: "rnp" or "anp" and their settings.
        train: clean `(x, y)` arrays the masks are learnt on. Defaults to `valid`.
        poisoned: optional `(x, y_target)`, traced along the curve, never used to decide.
        run: verbosity (`RunOptions`).

    Returns:
        A `PruningResult`: `sweep.channel_means` holds the masks, `sweep.channels` the
        gated channels, `sweep.layer` the gated layers; `snapshots[X]` is B'.
    """
    run = run or RunOptions()
    started = time.perf_counter()
    masks = learn_masks(model, train if train is not None else valid, defense, run.log)
    seconds = time.perf_counter() - started
    gated = GatedNetwork(model)
    run.log(f"{defense.method.upper()}: {int((masks < 0.2).sum())} of {gated.units} masks "
            f"below 0.2 ({seconds:.0f} s); sweeping in mask order ...")
    clean = _Gated(gated, np.asarray(valid[0], "float32"), config.batch_size)
    bad = None if poisoned is None else (
        _Gated(gated, np.asarray(poisoned[0], "float32"), config.batch_size),
        np.asarray(poisoned[1]))
    masked = insert_channel_mask(model, after=config.after)
    steps = Steps(clean, bad, np.asarray(valid[1]), masks, config, run, None,
                  {"mask_seconds": round(seconds, 2)})
    result = steps.run(masked, record_predictions=False)
    result.layer = "+".join(g.layer for g in gated.gates)
    snapshots = {}
    for t, snap in result.snapshots.items():
        snapshots[t] = pruned_copy(masked, [], name=f"{model.name}_{defense.method}_{t:g}")
        zero_units(snapshots[t], snap.pruned_channels)
    return PruningResult(sweep=result, masked_model=masked, snapshots=snapshots)


__all__ = ["LEARNERS", "learn_masks", "mask_prune"]
