"""Per-channel gates on every conv and BatchNorm layer: the unit of the mask-learning defenses.

A gate multiplies one output channel of a layer by a number in [0, 1]: a BatchNorm
layer's scale and shift (gamma, beta), or a convolution's kernel slice and bias when no
BatchNorm follows it. A gate at 0 makes the channel output exactly 0, as the project's
`ChannelMask` does after the last pooling layer; that is why a pruned gate folds into the
weights (`zeroed_copy`) and the result is plain Keras. Masks are learnt without touching
the network: `GatedNetwork` runs it through `Model.stateless_call` with gated weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.model.graph import trace

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                 keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


@dataclass(frozen=True)
class Gate:
    """The gates of one layer: which weights they scale and how many channels they have.

    Attributes:
        layer: the layer's name.
        scale: index in `model.trainable_variables` of the kernel (or BatchNorm gamma).
        shift: index of the bias (or beta), or None when the layer has none.
        channels: the layer's output channels (one gate each).
    """

    layer: str
    scale: int
    shift: int | None
    channels: int


def _followed_by_batch_norm(graph, layer) -> bool:
    calls = [c for c in graph.leaf_calls() if c.layer is layer]
    consumers = [n for c in calls for t in c.outputs for n in graph.consumers(t)]
    return bool(consumers) and all(isinstance(n.layer, keras.layers.BatchNormalization)
                                   for n in consumers)


def _gated_layers(model: keras.Model) -> list[keras.layers.Layer]:
    graph = trace(model)
    found, seen = [], set()
    for call in graph.leaf_calls():
        layer = call.layer
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
            found.append(layer)
        elif isinstance(layer, _CONVOLUTIONS) and not _followed_by_batch_norm(graph, layer):
            found.append(layer)
    return found


def find_gates(model: keras.Model) -> list[Gate]:
    """The gates of every conv and BatchNorm layer of `model`, in graph order.

    A convolution whose every consumer is a BatchNorm layer is gated through that layer
    (its gamma and beta), as RNP and ANP gate BatchNorm channels.

    Args:
        model: a built functional or Sequential model.

    Returns:
        One `Gate` per gated layer.

    Raises:
        ValueError: the model has no conv or BatchNorm layer.

    Example:

    >>> from keras_prune_guard import deepid
    >>> [(g.layer, g.channels) for g in find_gates(deepid(num_classes=3))]
    [('conv_1', 20), ('conv_2', 40), ('conv_3', 60), ('conv_4', 80)]
    """
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    gates = []
    for layer in _gated_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            scale, shift = layer.gamma, getattr(layer, "beta", None)
        else:
            scale, shift = layer.kernel, getattr(layer, "bias", None)
        if id(scale) not in index:  # a frozen layer: nothing to learn there
            continue
        gates.append(Gate(layer=layer.name, scale=index[id(scale)],
                          shift=None if shift is None else index.get(id(shift)),
                          channels=int(scale.shape[-1])))
    if not gates:
        raise ValueError(f"model '{model.name}' has no trainable conv or BatchNorm layer to "
                         "gate; the mask-learning defenses (rnp, anp) need one")
    return gates


def unit_names(gates: list[Gate]) -> list[str]:
    """Every gated channel as "layer:channel", in the order of the flat mask vector.

    Example:

    >>> unit_names([Gate("conv_1", 0, 1, 2), Gate("bn", 2, 3, 1)])
    ['conv_1:0', 'conv_1:1', 'bn:0']
    """
    return [f"{g.layer}:{c}" for g in gates for c in range(g.channels)]


class GatedNetwork:
    """A network run with a gate value per channel, its own weights untouched.

    Args:
        model: the network (B, or RNP's unlearned copy of it).

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> gated = GatedNetwork(deepid(num_classes=3))
    >>> x = np.zeros((2, 55, 47, 3), "float32")
    >>> gated(x, np.ones(gated.units, "float32")).shape
    TensorShape([2, 3])
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.gates = find_gates(model)
        self.sizes = [g.channels for g in self.gates]
        self.units = int(sum(self.sizes))

    def __call__(self, x, mask, scale_noise=None, shift_noise=None, training: bool = False):
        """The network's output with channel i scaled by `mask[i]` (plus the noise, if any).

        With noise (ANP's neuron perturbation), a channel's kernel or gamma is scaled by
        `mask + scale_noise`, its bias or beta by `mask + shift_noise`.
        """
        values = [v.value for v in self.model.trainable_variables]
        masks = tf.split(tf.cast(mask, "float32"), self.sizes)
        scales = masks if scale_noise is None else [
            m + n for m, n in zip(masks, tf.split(scale_noise, self.sizes))]
        shifts = masks if shift_noise is None else [
            m + n for m, n in zip(masks, tf.split(shift_noise, self.sizes))]
        for gate, scale, shift in zip(self.gates, scales, shifts):
            values[gate.scale] = values[gate.scale] * scale
            if gate.shift is not None:
                values[gate.shift] = values[gate.shift] * shift
        frozen = [v.value for v in self.model.non_trainable_variables]
        outputs, _ = self.model.stateless_call(values, frozen, x, training=training)
        return outputs


def zero_units(model: keras.Model, units) -> None:
    """Zeroes the channels `units` (flat indices of `find_gates(model)`) in `model`'s weights.

    Example:

    >>> from keras_prune_guard import deepid
    >>> net = deepid(num_classes=3)
    >>> zero_units(net, [0, 25])
    >>> zeroed_units(net)
    [0, 25]
    """
    _assign_kept(model, _keep_vectors(find_gates(model), units))


def _keep_vectors(gates: list[Gate], units) -> list[tuple[int, np.ndarray]]:
    """(variable index, 0/1 multiplier over its channels) of every variable `units` touch."""
    pruned = np.zeros(sum(g.channels for g in gates), bool)
    pruned[np.asarray(list(units), "int64")] = True
    found, start = [], 0
    for gate in gates:
        keep = (~pruned[start:start + gate.channels]).astype("float32")
        start += gate.channels
        if not keep.all():
            found.extend((idx, keep) for idx in (gate.scale, gate.shift) if idx is not None)
    return found


def _assign_kept(model: keras.Model, keeps: list[tuple[int, np.ndarray]]) -> None:
    variables = model.trainable_variables
    for idx, keep in keeps:
        variables[idx].assign(variables[idx] * keep)


def zeroed_units(model: keras.Model) -> list[int]:
    """The gated channels whose weights are all exactly 0 (pruned by `zero_units`)."""
    found, start = [], 0
    variables = model.trainable_variables
    for gate in find_gates(model):
        scale = keras.ops.convert_to_numpy(variables[gate.scale])
        dead = np.all(scale.reshape(-1, gate.channels) == 0, axis=0)
        if gate.shift is not None:
            dead &= keras.ops.convert_to_numpy(variables[gate.shift]) == 0
        found.extend(start + int(c) for c in np.flatnonzero(dead))
        start += gate.channels
    return found


class KeepZeroed(keras.callbacks.Callback):
    """Keeps the channels that are zero at the start of training at zero after every batch.

    Fine-tuning a network pruned by `zero_units` would otherwise revive its channels
    (a BatchNorm gamma at 0 still gets a gradient); a `ChannelMask` needs no such help.
    """

    def on_train_begin(self, logs=None):
        self._keeps = _keep_vectors(find_gates(self.model), zeroed_units(self.model))

    def on_train_batch_end(self, batch, logs=None):
        _assign_kept(self.model, self._keeps)


__all__ = ["Gate", "GatedNetwork", "KeepZeroed", "find_gates", "unit_names", "zero_units",
           "zeroed_units"]
