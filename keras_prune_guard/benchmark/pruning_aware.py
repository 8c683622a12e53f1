"""The pruning-aware attack of the Fine-Pruning paper (Liu et al. 2018), on DeepID.

1. Train on clean data only.
2. Prune, as a defender would, the `pool_3` channels least active on clean data until
   the clean accuracy drops by `ATTACKER_DROP` points (on the attacker's own data).
3. Train the pruned network (mask frozen) on clean plus poisoned data: the backdoor
   now lives in the channels that clean data keep active.
4. Restore the pruned channels with their clean weights and biases lowered below
   their smallest pre-activation, so they are dormant decoys: a defender pruning the
   least active channels first removes them, which changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from keras_prune_guard.config import PruneConfig, RunOptions
from keras_prune_guard.model.surgery import insert_channel_mask, pruned_copy, strip_channel_mask
from keras_prune_guard.pruning.sweep import sweep

#: How far the attacker prunes its clean network, in points of its own clean accuracy.
ATTACKER_DROP = 4.0
#: The convolution whose channels pool_3 pools (DeepID).
PRODUCER = "conv_3"
#: Images of the attacker's clean data used to rank and prune (fewer: faster, same order).
_RANKING_IMAGES = 2000


def pruning_aware_channels(model: keras.Model, clean) -> list[int]:
    """The pool_3 channels the attacker prunes: least active first, to `ATTACKER_DROP`."""

    x, y = clean
    rows = np.random.default_rng(0).permutation(len(x))[:_RANKING_IMAGES]
    result = sweep(insert_channel_mask(model, "pool_3"), (x[rows], y[rows]),
                   PruneConfig(thresholds=(ATTACKER_DROP,)), run=RunOptions(verbose=0))
    return list(result.snapshots[ATTACKER_DROP].pruned_channels)


def _pre_activation_max(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The largest pre-relu value of each `PRODUCER` channel over the images `x`."""
    conv = model.get_layer(PRODUCER)
    feed = keras.Model(model.inputs, conv.input)
    kernel, bias = (np.asarray(w) for w in conv.get_weights())
    best = np.full(kernel.shape[-1], -np.inf, np.float32)
    for i in range(0, len(x), 512):
        inputs = feed.predict(x[i:i + 512], verbose=0)
        z = keras.ops.conv(inputs, kernel, padding=conv.padding) + bias
        best = np.maximum(best, np.asarray(keras.ops.max(z, axis=(0, 1, 2))))
    return best


def train_pruning_aware(model: keras.Model, clean, poisoned,
                        fit: Callable[[keras.Model, tuple], keras.Model]) -> keras.Model:
    """Runs the four steps above; `fit(model, (x, y))` trains a model in place.

    Args:
        model: a fresh DeepID (with `conv_3` and `pool_3`).
        clean: the attacker's clean training data `(x, y)`.
        poisoned: its poisoned copies `(x, y_target)`.
        fit: trains a model on `(x, y)` (compiling it first) and returns it.

    Returns:
        The backdoored plain DeepID, its decoy channels dormant on all training data.
    """
    fit(model, clean)
    decoys = pruning_aware_channels(model, clean)
    masked = pruned_copy(insert_channel_mask(model, "pool_3"), decoys)
    seen = np.concatenate([clean[0], poisoned[0]])
    fit(masked, (seen, np.concatenate([clean[1], poisoned[1]])))
    out = strip_channel_mask(masked)
    kernel, bias = (np.asarray(w).copy() for w in out.get_layer(PRODUCER).get_weights())
    clean_kernel, clean_bias = model.get_layer(PRODUCER).get_weights()
    kernel[..., decoys] = np.asarray(clean_kernel)[..., decoys]
    bias[decoys] = np.asarray(clean_bias)[decoys]
    out.get_layer(PRODUCER).set_weights([kernel, bias])
    highest = _pre_activation_max(out, seen)
    bias[decoys] -= np.maximum(highest[decoys], 0.0) * 1.25 + 1e-3
    out.get_layer(PRODUCER).set_weights([kernel, bias])
    out.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return out
