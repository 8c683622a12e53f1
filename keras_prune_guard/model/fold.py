"""Folding a `ChannelMask` into weights: a plain-Keras model that computes what the masked one does.

Two ways, tried in this order:

1. Into the producer. When a convolution produces the masked tensor through
   pooling and relu layers only, and nothing else reads those tensors (conv_3
   -> pool_3 on the lab's DeepID), zeroing the convolution's kernel and bias for
   a pruned channel zeroes that channel exactly. Only a relu convolution (or a
   relu after it) is folded this way.
2. Into the consumers, when no single convolution produces it (after a
   residual add, a BatchNorm, a global pool, ...). Following the masked tensor
   forward through layers that keep channels apart and map zero to zero
   (pooling, dropout, zero-preserving activations, padding, concatenation,
   Flatten), every layer with weights that reads it gets the weights that read
   a pruned channel zeroed: the input rows of a Dense kernel (for a Flatten,
   the rows coming from that channel at every position), the input channels
   of a convolution kernel, or a BatchNorm's scale (its offset then holds the
   constant the masked channel gives).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.graph import PATH_SEP, Graph, LayerCall, is_pooling, trace

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CONV_TRANSPOSE = (
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Multiply,
)
#: Activations with f(0) == 0: a zeroed channel stays zero through them.
ZERO_PRESERVING = frozenset({
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "tanh",
    "softsign", "mish", "hard_silu", "hard_swish",
})
#: What consumer folding can zero, for error messages.
FOLDABLE = ("Dense", "Conv1D/2D/3D", "DepthwiseConv", "SeparableConv", "ConvTranspose",
            "BatchNormalization")


@dataclass
class Zeroing:
    """One change to one layer's weights.

    Attributes:
        path: the layer's path in the model (`"head/dense"` inside a nested model).
        kind: "conv_output" (kernel and bias of the producing convolution),
            "dense_rows", "conv_input", "depthwise_input", "separable_input",
            "transpose_input" or "batchnorm".
        channels: indices along the axis that `kind` zeroes.
    """

    path: str
    kind: str
    channels: np.ndarray


def fold_plan(masked: keras.Model) -> list[Zeroing]:
    """The weight changes that make `masked` without its mask compute the same outputs.

    Args:
        masked: a functional or Sequential model holding one `ChannelMask`.

    Returns:
        A list of `Zeroing`s (empty when nothing is pruned).

    Raises:
        ValueError: neither way applies; the message names the layer in the way.

    Example:

    >>> from keras_prune_guard import deepid, insert_channel_mask
    >>> plan = fold_plan(insert_channel_mask(deepid(), pruned_channels=[0, 5]))
    >>> [(z.path, z.kind, z.channels.tolist()) for z in plan]
    [('conv_3', 'conv_output', [0, 5])]
    """
    graph = trace(masked)
    mask_call = next(c for c in graph.leaf_calls() if isinstance(c.layer, ChannelMask))
    pruned = np.asarray(mask_call.layer.pruned_channels(), dtype="int64")
    chain = _producer_chain(graph, mask_call)
    if chain and isinstance(chain[-1].layer, _CONV):
        _check_relu(mask_call, chain)
        return [Zeroing(chain[-1].path, "conv_output", pruned)] if len(pruned) else []
    plan = _consumer_plan(graph, mask_call, pruned)
    return list(plan.values()) if len(pruned) else []


def apply_plan(model: keras.Model, plan: list[Zeroing]) -> None:
    """Applies each `Zeroing` of `plan` to the same-named layers of `model` (in place)."""
    for change in plan:
        layer = model
        for name in change.path.split(PATH_SEP):
            layer = layer.get_layer(name)
        layer.set_weights(_zeroed(layer, change))


def _producer_chain(graph: Graph, mask_call: LayerCall) -> list[LayerCall]:
    """Calls from the mask back to a convolution through pooling/relu, each read only by the next.

    Empty when the first tensor back is read by something else too.
    """
    chain, tensor = [], mask_call.inputs[0]
    call = graph.producer(tensor)
    while call is not None:
        if len(graph.consumers(tensor)) != 1 or graph.times_called(call.layer) != 1:
            return []  # another layer reads it: zeroing the producer would change that one
        chain.append(call)
        layer = call.layer
        if isinstance(layer, _CONV):
            return chain
        allowed = isinstance(layer, keras.layers.MaxPooling2D | keras.layers.AveragePooling2D)
        allowed = allowed or isinstance(layer, keras.layers.ReLU) or _is_relu_activation(layer)
        if not allowed or len(call.inputs) != 1:
            return chain
        tensor = call.inputs[0]
        call = graph.producer(tensor)
    return chain


def _check_relu(mask_call: LayerCall, chain: list[LayerCall]) -> None:
    conv = chain[-1].layer
    relu = _name(getattr(conv, "activation", None)) == "relu" or any(
        isinstance(c.layer, keras.layers.ReLU) or _is_relu_activation(c.layer) for c in chain
    )
    if not relu:
        raise ValueError(
            f"Cannot fold ChannelMask '{mask_call.layer.name}' into a convolution: the layers "
            f"feeding it are {[c.path for c in chain]}, expected a relu convolution "
            "optionally followed by pooling. Save the masked model (.keras) instead."
        )


def _consumer_plan(graph: Graph, mask_call: LayerCall, pruned: np.ndarray) -> dict:
    plan: dict[str, Zeroing] = {}
    outputs = {id(t) for t in graph.outputs}
    todo = [(mask_call.outputs[0], pruned)]
    while todo:
        tensor, channels = todo.pop()
        if id(tensor) in outputs:
            _refuse(mask_call, "the model's output", "the masked channels reach the output "
                    "with no layer with weights in between")
        for call in graph.consumers(tensor):
            step = _follow(graph, mask_call, call, tensor, channels)
            if isinstance(step, Zeroing):
                old = plan.get(step.path)
                merged = step.channels if old is None else np.union1d(old.channels, step.channels)
                plan[step.path] = Zeroing(step.path, step.kind, merged)
            else:
                todo.append(step)
    return plan


def _follow(graph: Graph, mask_call: LayerCall, call: LayerCall, tensor, channels):
    """What a consumer does with zeroed `channels`: a `Zeroing`, or `(tensor, channels)`."""
    layer, out = call.layer, call.outputs[0]
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        _refuse(mask_call, call.path, "it works on channels_first data")
    kind = _weight_kind(layer)
    if kind is not None:
        if graph.times_called(layer) != 1:
            _refuse(mask_call, call.path, "the layer is shared (called more than once)")
        if kind == "batchnorm" and not (layer.center and layer.scale and _last_axis(layer)):
            _refuse(mask_call, call.path, "a BatchNormalization needs center, scale and the "
                    "last axis to be folded")
        return Zeroing(call.path, kind, channels)
    if isinstance(layer, keras.layers.Flatten):
        positions = int(np.prod(tensor.shape[1:-1]))
        width = int(tensor.shape[-1])
        flat = (np.arange(positions)[:, None] * width + channels[None, :]).reshape(-1)
        return out, np.sort(flat)
    if isinstance(layer, keras.layers.Concatenate):
        if layer.axis not in (-1, len(out.shape) - 1):
            _refuse(mask_call, call.path, f"it concatenates along axis {layer.axis}")
        offset = 0
        for item in call.inputs:
            if item is tensor:
                break
            offset += int(item.shape[-1])
        return out, channels + offset
    if _passes_through(layer, tensor, out):
        return out, channels
    _refuse(mask_call, call.path, f"a {type(layer).__name__} does not keep a zeroed channel "
            "zero and apart from the others")


def _weight_kind(layer) -> str | None:
    if isinstance(layer, keras.layers.Dense):
        return "dense_rows"
    if isinstance(layer, _SEPARABLE):
        return "separable_input"
    if isinstance(layer, _DEPTHWISE):
        return "depthwise_input"
    if isinstance(layer, _CONV_TRANSPOSE):
        return "transpose_input"
    if isinstance(layer, _CONV):
        return "conv_input"
    if isinstance(layer, keras.layers.BatchNormalization):
        return "batchnorm"
    return None


def _passes_through(layer, tensor, out) -> bool:
    if out.shape[-1] != tensor.shape[-1]:
        return False
    if is_pooling(layer) or isinstance(layer, _PASS_THROUGH):
        return True
    if isinstance(layer, keras.layers.ReLU):
        return float(layer.threshold) == 0.0 or float(layer.negative_slope) == 0.0
    if isinstance(layer, keras.layers.Activation):
        return _name(layer.activation) in ZERO_PRESERVING
    return False


def _zeroed(layer, change: Zeroing) -> list[np.ndarray]:
    weights = layer.get_weights()
    c = change.channels
    if change.kind == "conv_output":
        weights[0][..., c] = 0.0
        if len(weights) > 1:
            weights[1][c] = 0.0
    elif change.kind == "dense_rows":
        weights[0][c, :] = 0.0
    elif change.kind in ("depthwise_input", "separable_input"):
        weights[0][..., c, :] = 0.0
    elif change.kind == "transpose_input":
        weights[0][..., c] = 0.0
    elif change.kind == "conv_input":
        per_group = weights[0].shape[-2]
        out_per_group = weights[0].shape[-1] // int(getattr(layer, "groups", 1) or 1)
        for channel in c:
            group = int(channel) // per_group
            weights[0][..., int(channel) % per_group,
                       group * out_per_group:(group + 1) * out_per_group] = 0.0
    elif change.kind == "batchnorm":
        gamma, beta, mean, var = weights
        inv = keras.ops.convert_to_numpy(
            keras.ops.rsqrt(keras.ops.convert_to_tensor(var[c] + layer.epsilon)) * gamma[c]
        )
        beta[c] = beta[c] - mean[c] * inv  # what the layer gives a zeroed channel
        gamma[c] = 0.0
    return weights


def _refuse(mask_call: LayerCall, where: str, why: str):
    raise ValueError(
        f"Cannot fold ChannelMask '{mask_call.layer.name}' into the weights: no single relu "
        f"convolution produces its input, and on the way to the layers that read it is "
        f"'{where}': {why}. Consumers that can be folded: {', '.join(FOLDABLE)}, through "
        "pooling, dropout, padding, zero-preserving activations, Concatenate and Flatten. "
        "Save the masked model (.keras) instead."
    )


def _last_axis(layer) -> bool:
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    return axis == -1 or axis == len(layer.input.shape) - 1


def _is_relu_activation(layer) -> bool:
    return isinstance(layer, keras.layers.Activation) and _name(layer.activation) == "relu"


def _name(activation) -> str:
    return getattr(activation, "__name__", "")


__all__ = ["FOLDABLE", "ZERO_PRESERVING", "Zeroing", "apply_plan", "fold_plan"]
