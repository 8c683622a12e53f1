"""Model surgery: put a `ChannelMask` into a network, split it there, fold it away."""

from __future__ import annotations

import keras

from keras_prune_guard.layers import ChannelMask


def _rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def last_pooling_layer(model: keras.Model) -> str:
    """Returns the name of the last spatial pooling layer of `model`.

    Args:
        model: a functional or Sequential model.

    Returns:
        The name of the last layer whose class name contains "Pooling" and
        whose output is rank 4 (batch, height, width, channels).

    Raises:
        ValueError: the model has no such layer; the message lists its layers.

    Example:

    >>> last_pooling_layer(deepid())
    'pool_3'
    """
    candidates = [
        layer.name
        for layer in model.layers
        if "Pooling" in type(layer).__name__ and _rank(layer) == 4
    ]
    if not candidates:
        raise ValueError(
            f"Model '{model.name}' has no spatial pooling layer to put a channel mask "
            f"after; pass `after=` one of its layers: {[lyr.name for lyr in model.layers]}"
        )
    return candidates[-1]


def channel_layer(model: keras.Model, name: str | None) -> keras.layers.Layer:
    """Returns the layer named `name` (default: the last pooling layer), checked.

    Raises:
        ValueError: no layer has that name (the message lists the layers that
            could be used), or its output has no channel axis.
    """
    name = last_pooling_layer(model) if name is None else name
    names = [layer.name for layer in model.layers]
    if name not in names:
        usable = [
            lyr.name
            for lyr in model.layers
            if (_rank(lyr) or 0) >= 3 and not isinstance(lyr, keras.layers.InputLayer)
        ]
        raise ValueError(
            f"after={name!r}: model '{model.name}' has no layer named '{name}'. Layers a "
            f"channel mask "
            f"can follow: {usable}"
        )
    layer = model.get_layer(name)
    rank = _rank(layer)
    if rank is None or rank < 3 or isinstance(layer, keras.layers.InputLayer):
        shape = getattr(getattr(layer, "output", None), "shape", None)
        raise ValueError(
            f"after={name!r}: layer '{name}' of model '{model.name}' has no channel axis "
            f"to mask: its "
            f"output shape is {shape}, expected (batch, ..., channels) with rank >= 3."
        )
    return layer


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> None:
    """Copies every layer's weights from `source` to the same-named layer of `target`.

    Layers of `target` that `source` lacks (such as an inserted `ChannelMask`)
    keep their own weights.
    """
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        twin = by_name.get(layer.name)
        if twin is not None and twin.weights:
            layer.set_weights(twin.get_weights())


def insert_channel_mask(
    model: keras.Model,
    after: str | None = None,
    pruned_channels: list[int] | None = None,
) -> keras.Model:
    """Returns a copy of `model` with a `ChannelMask` right after layer `after`.

    All weights are copied by layer name (`keras.models.clone_model` alone
    would give fresh weights). With nothing pruned, the new model's outputs
    equal the original's exactly.

    Args:
        model: a functional or Sequential model (the backdoored network B).
        after: name of the layer whose output is masked. Defaults to `None`,
            the last spatial pooling layer (`pool_3` on the lab's DeepID).
        pruned_channels: channels pruned from the start. Defaults to `None`.

    Returns:
        A new functional model; its mask layer is named `<after>_mask`.

    Raises:
        ValueError: `after` names no layer, or a layer with no channel axis.
        TypeError: `model` is a subclassed model.

    Example:

    >>> masked = insert_channel_mask(deepid(), after="pool_3")
    >>> find_channel_mask(masked).name
    'pool_3_mask'
    """
    _check_graph_model(model, "insert_channel_mask")
    if any(isinstance(layer, ChannelMask) for layer in model.layers):
        raise ValueError(
            f"Model '{model.name}' already has a ChannelMask "
            f"('{find_channel_mask(model).name}'); prune that one instead."
        )
    model = as_functional(model)  # call_function needs a functional graph
    target = channel_layer(model, after)
    mask = ChannelMask(pruned_channels=pruned_channels, name=f"{target.name}_mask")

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return mask(out) if layer.name == target.name else out

    clone = keras.models.clone_model(model, call_function=call_function)
    copy_weights_by_name(model, clone)
    return clone


def as_functional(model: keras.Model) -> keras.Model:
    """A Sequential model's layers (shared, not copied) as a functional model.

    Other models are returned unchanged. Tools that walk a layer graph
    (`clone_model(call_function=...)`, tf-keras-vis) need the functional form.

    Example:

    >>> as_functional(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])).layers
    """
    if not isinstance(model, keras.Sequential):
        return model
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    return keras.Model(model.inputs, outputs, name=model.name)


def find_channel_mask(model: keras.Model) -> ChannelMask:
    """Returns the single `ChannelMask` layer of `model`.

    Raises:
        ValueError: the model has no ChannelMask, or more than one.
    """
    masks = [layer for layer in model.layers if isinstance(layer, ChannelMask)]
    if len(masks) != 1:
        raise ValueError(
            f"Model '{model.name}' must hold exactly one ChannelMask layer; found "
            f"{len(masks)}. Use insert_channel_mask(model, after=...) first."
        )
    return masks[0]


def masked_layer_name(model: keras.Model) -> str:
    """Returns the name of the layer whose output the model's ChannelMask masks."""
    mask = find_channel_mask(model)
    return mask._inbound_nodes[0].parent_nodes[0].operation.name


def split_at_mask(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Splits a masked model into the part before its mask and the part after.

    Args:
        model: a functional model holding one `ChannelMask`.

    Returns:
        `(head, tail)`: `head` maps the model's input to the activations that
        enter the mask; `tail` maps activations (already masked) to the model's
        output. Both share their layers (and weights) with `model`, and the mask
        itself is in neither, so `tail(head(x) * mask)` equals `model(x)`.

    Example:

    >>> head, tail = split_at_mask(insert_channel_mask(deepid()))
    >>> head.output_shape
    (None, 5, 4, 60)
    """
    mask = find_channel_mask(model)
    head = keras.Model(model.inputs, mask.input, name=f"{model.name}_head")
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    tail_graph = keras.Model(mask.output, outputs)
    # Re-run the same layer objects on a fresh input: a flat model sharing weights.
    tail = keras.models.clone_model(tail_graph, clone_function=lambda layer: layer)
    tail = keras.Model(tail.inputs, tail.output, name=f"{model.name}_tail")
    return head, tail


def strip_channel_mask(model: keras.Model) -> keras.Model:
    """Folds the ChannelMask into the convolution feeding it and removes it.

    For a network whose masked channels come from a convolution with a relu,
    optionally followed by pooling (conv_3 -> pool_3 -> mask on the lab's
    DeepID), zeroing the convolution's kernel and bias for a channel gives
    exactly the same output as masking it. The returned model has no custom
    layers, so plain Keras (and the lab's own eval.py) can load it.

    Args:
        model: a functional model holding one `ChannelMask`.

    Returns:
        A new functional model without the mask, weights copied and folded.

    Raises:
        ValueError: the layers between the convolution and the mask are not a
            relu convolution followed by max/average pooling, so folding would
            change the outputs.

    Example:

    >>> masked = insert_channel_mask(deepid(), pruned_channels=[0, 5])
    >>> plain = strip_channel_mask(masked)
    """
    mask = find_channel_mask(model)
    pruned = mask.pruned_channels()
    conv = _conv_feeding(model, mask)
    plain = keras.models.clone_model(
        model,
        call_function=lambda layer, *a, **k: (
            a[0] if isinstance(layer, ChannelMask) else layer(*a, **k)
        ),
    )
    plain = keras.Model(plain.inputs, plain.output, name=model.name)
    copy_weights_by_name(model, plain)
    folded = plain.get_layer(conv.name)
    kernel, *rest = folded.get_weights()
    kernel[..., pruned] = 0.0
    if rest:
        rest[0][pruned] = 0.0
    folded.set_weights([kernel, *rest])
    return plain


def _conv_feeding(model: keras.Model, mask: ChannelMask) -> keras.layers.Layer:
    chain = []
    layer = mask._inbound_nodes[0].parent_nodes[0].operation
    while True:
        chain.append(layer)
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv1D | keras.layers.Conv3D):
            break
        allowed = (
            isinstance(layer, keras.layers.MaxPooling2D | keras.layers.AveragePooling2D)
            or isinstance(layer, keras.layers.ReLU)
            or (isinstance(layer, keras.layers.Activation) and _is_relu(layer.activation))
        )
        nodes = layer._inbound_nodes[0].parent_nodes if layer._inbound_nodes else []
        if not allowed or len(nodes) != 1:
            break
        layer = nodes[0].operation
    conv = chain[-1]
    is_conv = isinstance(conv, keras.layers.Conv2D | keras.layers.Conv1D | keras.layers.Conv3D)
    relu_seen = any(isinstance(lyr, keras.layers.ReLU) for lyr in chain) or any(
        isinstance(lyr, keras.layers.Activation) and _is_relu(lyr.activation) for lyr in chain
    )
    if not is_conv or not (_is_relu(conv.activation) or relu_seen):
        raise ValueError(
            f"Cannot fold ChannelMask '{mask.name}' into a convolution: the layers "
            f"feeding it are {[lyr.name for lyr in chain]}, expected a relu "
            "convolution optionally followed by pooling. Save the masked model "
            "(.keras) instead."
        )
    return conv


def _is_relu(activation) -> bool:
    return getattr(activation, "__name__", "") == "relu"


def _check_graph_model(model, what: str) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} needs a keras.Model. Received: {type(model).__name__}")
    graph_classes = {"Functional", "Sequential"}
    if not graph_classes & {cls.__name__ for cls in type(model).__mro__}:
        raise TypeError(
            f"{what} works on functional or Sequential Keras models, whose layer graph "
            f"can be rewired. Received a subclassed model of type "
            f"{type(model).__name__}; rebuild it with the functional API "
            "(keras.Model(inputs, outputs))."
        )



def pruned_copy(
    model: keras.Model, pruned_channels: list[int], name: str | None = None
) -> keras.Model:
    """Returns an independent copy of a masked model with exactly `pruned_channels` pruned.

    Args:
        model: a functional model holding one `ChannelMask`.
        pruned_channels: the channels to prune in the copy.
        name: the copy's name. Defaults to `None` (the model's own name).

    Returns:
        A new functional model with copied weights; `model` is left unchanged.

    Example:

    >>> b_prime = pruned_copy(insert_channel_mask(deepid()), [0, 1, 2])
    """
    find_channel_mask(model)
    clone = keras.models.clone_model(model)
    clone = keras.Model(clone.inputs, clone.output, name=name or model.name)
    copy_weights_by_name(model, clone)
    find_channel_mask(clone).set_pruned(pruned_channels)
    return clone
