"""Model surgery: put a `ChannelMask` into a network, split it there, fold it away.

Where the mask goes by default (`last_pooling_layer`): the pooling layer, global
or spatial, whose output feeds the classifier head. Functional and Sequential
models are supported, with nested models (a `keras.applications` backbone inside
a transfer model): `after="resnet50/conv5_block3_out"` reaches a layer inside one.
"""

from __future__ import annotations

import keras

from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.fold import apply_plan, fold_plan
from keras_prune_guard.model.graph import (
    PATH_SEP,
    Graph,
    LayerCall,
    as_functional,
    flatten_nested,
    is_global_pooling,
    is_graph_model,
    is_head_layer,
    is_pooling,
    leaf_layers,
    trace,
)


def _rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def last_pooling_layer(model: keras.Model) -> str:
    """Returns the pooling layer whose output feeds the classifier head: the default mask place.

    The rule: walk back from the model's output through the layers of its
    classifier head (Dense, Flatten, Reshape, Dropout, Activation, Softmax,
    ReLU, ... and, on feature vectors, Add, Concatenate, BatchNormalization,
    ...) until a pooling layer, global or spatial (`GlobalAveragePooling2D`,
    `MaxPooling2D`, ...); the walk enters nested models. When several branches
    end in pooling layers, the one latest in the model's layer order is chosen.
    On the lab's DeepID that is `pool_3` (which feeds `flatten_1` and
    `conv_4`); on `keras.applications` classifiers, the global pooling before
    `predictions` (`avg_pool`, `global_average_pooling2d`), or `block5_pool` on
    VGG16.

    Args:
        model: a functional or Sequential model.

    Returns:
        The layer's name, or `"<nested model>/<layer>"` for a layer inside a
        nested model (e.g. `"resnet50/avg_pool"`).

    Raises:
        ValueError: no pooling layer feeds the head; the message says where the
            walk stopped and lists candidate layers for `after=` (CLI `--after`).
        TypeError: a subclassed model (it has no layer graph to walk).

    Example:

    >>> import keras
    >>> from keras_prune_guard import deepid
    >>> last_pooling_layer(deepid())
    'pool_3'
    >>> last_pooling_layer(keras.Sequential([  # e.g. keras.applications.ResNet50()
    ...     keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...     keras.layers.GlobalAveragePooling2D(name="avg_pool"), keras.layers.Dense(2)]))
    'avg_pool'
    """
    _check_graph_model(model, "last_pooling_layer")
    return _default_path(trace(model), model.name)


def _default_path(graph: Graph, name: str) -> str:
    """`last_pooling_layer` on an already traced graph."""
    found, walked, stopped = _walk_head(graph)
    if found:
        order = {id(call): i for i, call in enumerate(graph.calls)}
        return max(found, key=lambda call: order[id(call)]).path
    head = [call.path for call in walked]
    ends = [f"{call.path} ({type(call.layer).__name__})" for call in stopped] or ["the input"]
    raise ValueError(
        f"Model '{name}' has no pooling layer feeding its classifier head: walking back "
        f"from its output through head layers (Dense, Flatten, Reshape, Dropout, Activation, "
        f"Softmax, ...) it passed {head} and stopped at {ends}, none of them a pooling layer "
        "(global or spatial). Name the layer to mask with after= (CLI: --after NAME); "
        f"candidates: {_candidates(graph, stopped)}"
    )


def _walk_head(graph: Graph) -> tuple[list[LayerCall], list[LayerCall], list[LayerCall]]:
    """(pooling calls reached, head calls walked through, other calls the walk stopped at)."""
    found, walked, stopped, seen = [], [], [], set()
    todo = [graph.producer(t) for t in graph.outputs]
    while todo:
        call = todo.pop()
        if call is None or id(call) in seen:
            continue
        seen.add(id(call))
        if is_pooling(call.layer):
            found.append(call)
        elif is_head_layer(call):
            walked.append(call)
            todo.extend(graph.parents(call))
        else:
            stopped.append(call)
    return found, walked, stopped


def _candidates(graph: Graph, stopped: list[LayerCall], limit: int = 8) -> list[str]:
    """Layers a mask could follow: where the head walk stopped, then the last pooling layers."""
    paths = [c.path for c in stopped if _maskable(c)]
    paths += [c.path for c in reversed(graph.leaf_calls()) if is_pooling(c.layer)]
    unique = list(dict.fromkeys(paths))
    return unique[:limit] + (["..."] if len(unique) > limit else [])


def _maskable(call: LayerCall) -> bool:
    shape = call.outputs[0].shape if len(call.outputs) == 1 else ()
    return len(shape) >= 3 or (len(shape) == 2 and is_global_pooling(call.layer))


def channel_layer(model: keras.Model, name: str | None) -> keras.layers.Layer:
    """Returns the layer named `name` (default: `last_pooling_layer`), checked.

    `name` is a layer of `model`, `"<nested model>/<layer>"` for a layer inside
    a nested model (`"resnet50/conv5_block3_out"`), or a bare inner name that
    only one nested model holds (`"conv5_block3_out"`). A nested model's own
    name stands for its output.

    Raises:
        ValueError: no layer has that name (the message lists the layers that
            could be used), or its output has no channel axis: rank >= 3, or
            the (batch, channels) output of a global pooling layer.
    """
    return _resolve(model, name)[1]


def _resolve(model: keras.Model, name: str | None) -> tuple[str, keras.layers.Layer]:
    """`(path, layer)` the mask goes after; a nested model resolves to its output's producer."""
    _check_graph_model(model, "channel_layer")
    graph = trace(model)
    name = _default_path(graph, model.name) if name is None else name
    calls = graph.find(name)
    paths = sorted({call.path for call in calls})
    if not calls:
        usable = [c.path for c in graph.calls if not c.nested and _maskable(c)]
        opaque = "" if graph.inlined else (
            " Its nested models cannot be looked into: layer names repeat across them.")
        raise ValueError(
            f"after={name!r}: model '{model.name}' has no layer named '{name}' (CLI: --after; "
            f"layers inside nested models are named '<model>/<layer>').{opaque} Layers a "
            f"channel mask can follow: {usable}"
        )
    if len(paths) > 1:
        raise ValueError(
            f"after={name!r}: model '{model.name}' has several layers named '{name}' in "
            f"nested models: {paths}; pass one of these paths."
        )
    call = calls[0]
    if call.nested:  # the nested model's output: mask after the layer producing it
        call = graph.producer(call.outputs[0]) if len(call.outputs) == 1 else call
    if call.nested or not _maskable(call) or isinstance(call.layer, keras.layers.InputLayer):
        shape = tuple(call.outputs[0].shape) if len(call.outputs) == 1 else None
        raise ValueError(
            f"after={name!r}: layer '{name}' of model '{model.name}' has no channel axis to "
            f"mask: its output shape is {shape}, expected (batch, ..., channels) with rank "
            ">= 3, or the (batch, channels) output of a global pooling layer."
        )
    return call.path, call.layer


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
    equal the original's exactly. When the mask goes inside a nested model
    (`after="resnet50/conv5_block3_out"`) or right after one (`after="resnet50"`),
    the nested models are inlined first: the copy is one flat functional graph
    with the same layer names.

    Args:
        model: a functional or Sequential model (the backdoored network B).
        after: name of the layer whose output is masked; `"<nested>/<layer>"`
            (or the bare inner name) inside a nested model. Defaults to `None`,
            `last_pooling_layer(model)` (`pool_3` on the lab's DeepID).
        pruned_channels: channels pruned from the start. Defaults to `None`.

    Returns:
        A new functional model; its mask layer is named `<layer>_mask`.

    Raises:
        ValueError: `after` names no layer, or a layer with no channel axis;
            an unbuilt Sequential model.
        TypeError: `model` is a subclassed model.

    Example:

    >>> from keras_prune_guard import deepid
    >>> masked = insert_channel_mask(deepid(), after="pool_3")
    >>> find_channel_mask(masked).name
    'pool_3_mask'
    """
    _check_graph_model(model, "insert_channel_mask")
    model = as_functional(model)  # call_function needs a functional graph
    if any(isinstance(layer, ChannelMask) for layer in leaf_layers(model)):
        raise ValueError(
            f"Model '{model.name}' already has a ChannelMask "
            f"('{find_channel_mask(model).name}'); prune that one instead."
        )
    path, target = _resolve(model, after)
    if PATH_SEP in path:  # inside (or right after) a nested model: inline them first
        model = flatten_nested(model)
    mask = ChannelMask(pruned_channels=pruned_channels, name=f"{target.name}_mask")

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return mask(out) if layer is target or layer.name == target.name else out

    clone = keras.models.clone_model(model, call_function=call_function)
    copy_weights_by_name(model, clone)
    return clone


def find_channel_mask(model: keras.Model) -> ChannelMask:
    """Returns the single `ChannelMask` layer of `model`.

    Works on functional, Sequential and subclassed models (a mask held as an
    attribute of a subclassed model is one of its `layers`).

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


def can_split_at_mask(model: keras.Model) -> bool:
    """True when `model`'s layer graph can be cut at its mask (functional or Sequential).

    A subclassed model applies its `ChannelMask` inside its own `call`, which
    Keras cannot rewire; the sweep then runs such a model whole at every step.
    """
    return is_graph_model(model)


def masked_layer_name(model: keras.Model) -> str:
    """Returns the name of the layer whose output the model's ChannelMask masks.

    For a subclassed model (no layer graph) it is the mask's own name.
    """
    mask = find_channel_mask(model)
    if not is_graph_model(model):
        return mask.name
    graph = trace(model)
    call = next(c for c in graph.leaf_calls() if c.layer is mask)
    producer = graph.producer(call.inputs[0])
    return mask.name if producer is None else producer.path


def split_at_mask(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Splits a masked model into the part before its mask and the part after.

    Args:
        model: a functional or Sequential model holding one `ChannelMask`.

    Returns:
        `(head, tail)`: `head` maps the model's input to the activations that
        enter the mask; `tail` maps activations (already masked) to the model's
        output. Both share their layers (and weights) with `model`, and the mask
        itself is in neither, so `tail(head(x) * mask)` equals `model(x)`.
        Nested models are inlined in both.

    Raises:
        TypeError: a subclassed model, whose `call` applies the mask in Python:
            there is no layer graph to cut.

    Example:

    >>> from keras_prune_guard import deepid
    >>> head, tail = split_at_mask(insert_channel_mask(deepid()))
    >>> head.output_shape, tail.input_shape, tail.output_shape
    ((None, 5, 4, 60), (None, 5, 4, 60), (None, 1283))
    """
    if not can_split_at_mask(model):
        raise TypeError(
            f"split_at_mask cannot split model '{model.name}': it is a subclassed model "
            f"({type(model).__name__}) whose call() applies its ChannelMask in Python, so "
            "Keras holds no layer graph to cut at the mask. sweep(), prune() and "
            "PruningCallback run such a model whole at every step instead (exact, one "
            "full pass per step); to split it, rebuild it with the functional API."
        )
    mask = find_channel_mask(model)
    graph = trace(model)  # the model's own tensors, nested models inlined
    call = next(c for c in graph.leaf_calls() if c.layer is mask)
    head = keras.Model(graph.model.inputs, call.inputs[0], name=f"{model.name}_head")
    outputs = graph.outputs[0] if len(graph.outputs) == 1 else graph.outputs
    tail_graph = keras.Model(call.outputs[0], outputs)
    # Re-run the same layer objects on a fresh input: a flat model sharing weights.
    tail = keras.models.clone_model(tail_graph, clone_function=lambda layer: layer)
    tail = keras.Model(tail.inputs, tail.output, name=f"{model.name}_tail")
    return head, tail


def strip_channel_mask(model: keras.Model) -> keras.Model:
    """Folds the ChannelMask into the weights and removes it: a plain-Keras model.

    Where a relu convolution produces the masked channels, optionally followed
    by pooling (conv_3 -> pool_3 -> mask on the lab's DeepID), its kernel and
    bias are zeroed for each pruned channel. Where no single convolution
    produces them (after a residual add, a BatchNorm, a global pool: ResNet,
    MobileNet, EfficientNet, DenseNet), the layers that consume the masked
    tensor are folded instead: the input rows of the following Dense kernel
    (through a Flatten: the rows coming from those channels), the input
    channels of the following convolution, or a following BatchNorm's scale
    and offset (see `keras_prune_guard.model.fold`). Either way the returned model
    gives the masked model's outputs and has no custom layers, so plain Keras
    (and the lab's own eval.py) can load it.

    Args:
        model: a functional or Sequential model holding one `ChannelMask`.

    Returns:
        A new functional model without the mask, weights copied and folded.

    Raises:
        ValueError: the mask cannot be folded exactly (the message names the
            layer in the way, e.g. a relu-less convolution feeding it, or a
            residual add after it).
        TypeError: a subclassed model (its class is a custom object anyway).

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> masked = insert_channel_mask(deepid(), pruned_channels=[0, 5])
    >>> plain = strip_channel_mask(masked)  # conv_3's channels 0 and 5 zeroed instead
    >>> x = np.random.default_rng(0).uniform(0, 255, (2, 55, 47, 3)).astype("float32")
    >>> len(plain.layers) < len(masked.layers), bool(np.allclose(plain(x), masked(x), atol=1e-6))
    (True, True)
    """
    _check_graph_model(model, "strip_channel_mask")
    model = as_functional(model)
    find_channel_mask(model)
    plan = fold_plan(model)
    plain = keras.models.clone_model(
        model,
        call_function=lambda layer, *a, **k: (
            a[0] if isinstance(layer, ChannelMask) else layer(*a, **k)
        ),
    )
    plain = keras.Model(plain.inputs, plain.output, name=model.name)
    copy_weights_by_name(model, plain)
    apply_plan(plain, plan)
    return plain


def _check_graph_model(model, what: str) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} needs a keras.Model. Received: {type(model).__name__}")
    if not is_graph_model(model):
        raise TypeError(
            f"{what} works on functional or Sequential Keras models, whose layer graph "
            f"can be rewired. Received a subclassed model of type "
            f"{type(model).__name__}; rebuild it with the functional API "
            "(keras.Model(inputs, outputs)), or put a ChannelMask in its call() yourself: "
            "sweep(), prune() and PruningCallback then run it whole at every step."
        )


def pruned_copy(
    model: keras.Model, pruned_channels: list[int], name: str | None = None
) -> keras.Model:
    """Returns an independent copy of a masked model with exactly `pruned_channels` pruned.

    Args:
        model: a model holding one `ChannelMask`: functional, Sequential, or a
            subclassed model that Keras can rebuild from its config (it
            implements `get_config`, or its constructor takes only simple
            arguments).
        pruned_channels: the channels to prune in the copy.
        name: the copy's name. Defaults to `None` (the model's own name).

    Returns:
        A new model with copied weights; `model` is left unchanged.

    Example:

    >>> from keras_prune_guard import deepid
    >>> masked = insert_channel_mask(deepid())
    >>> b_prime = pruned_copy(masked, [0, 1, 2])
    >>> find_channel_mask(b_prime).pruned_channels(), find_channel_mask(masked).pruned_channels()
    ([0, 1, 2], [])
    """
    find_channel_mask(model)
    if not is_graph_model(model):
        clone = _subclassed_copy(model, name)
    else:
        model = as_functional(model)
        clone = keras.models.clone_model(model)
        clone = keras.Model(clone.inputs, clone.output, name=name or model.name)
        copy_weights_by_name(model, clone)
    find_channel_mask(clone).set_pruned(pruned_channels)
    return clone


def _subclassed_copy(model: keras.Model, name: str | None) -> keras.Model:
    """A subclassed model rebuilt from its config, built as `model` was, weights copied."""
    config = keras.saving.serialize_keras_object(model)
    if name:
        config["config"] = {**config["config"], "name": name}
    clone = keras.saving.deserialize_keras_object(
        config, custom_objects={type(model).__name__: type(model)}
    )
    build = model.get_build_config()
    if not clone.built and build:
        clone.build_from_config(build)
    clone.set_weights(model.get_weights())
    return clone
