"""A model's layer graph, nested models inlined: who feeds whom, and where the head starts.

`trace(model)` replays a functional or Sequential model with
`keras.models.clone_model(clone_function=lambda layer: layer, call_function=...)`
(public Keras API), entering every nested functional or Sequential model, and
records each layer call with its input and output tensors. The replay reuses
the model's own layer objects, so the flat model it builds shares every
weight with the original (nothing is copied). Layers inside a nested model
are named by their path, `"<outer>/<inner>"` (e.g. `"resnet50/conv5_block3_out"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

#: Separator of a nested layer's path: `"resnet50/conv5_block3_out"`.
PATH_SEP = "/"

# Layers that make up a classifier head at any rank (they never mix positions with
# channels the way a convolution does).
_HEAD_ANY_RANK = (
    keras.layers.Dense,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
    keras.layers.AlphaDropout,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.ActivityRegularization,
    keras.layers.Activation,
    keras.layers.Softmax,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Identity,
)
# Layers that belong to the head only on feature vectors (batch, features): on
# feature maps they are part of the backbone (residual adds, BatchNorm, ...).
_HEAD_ON_VECTORS = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Concatenate,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.UnitNormalization,
)


@dataclass(eq=False)
class LayerCall:
    """One call of a layer in a traced graph.

    Attributes:
        layer: the layer object (shared with the traced model).
        path: its name, prefixed by the nested models it sits in
            (`"resnet50/conv1_conv"`); a nested model's own call has its name.
        inputs: the KerasTensors it was called on, flattened.
        outputs: the KerasTensors it returned, flattened.
        nested: True for the call of a whole nested model (whose inner calls
            are recorded too).
    """

    layer: keras.layers.Layer
    path: str
    inputs: list
    outputs: list
    nested: bool = False


@dataclass(eq=False)
class Graph:
    """The calls of a traced model in topological order, and its flat functional form.

    Attributes:
        name: the traced model's name.
        calls: every layer call, in the order the replay made them; a nested
            model's call comes after the calls inside it.
        inputs: the replay's input tensors (structured as the model's input).
        outputs: the flat model's output tensors.
        inlined: False when nested models were kept as single calls (their
            layer names repeat, so Keras cannot inline them).
    """

    name: str
    calls: list[LayerCall]
    inputs: object
    outputs: list
    _producer: dict = field(default_factory=dict, repr=False)
    _consumers: dict = field(default_factory=dict, repr=False)
    inlined: bool = True
    _model: keras.Model | None = field(default=None, repr=False)

    def __post_init__(self):
        for call in self.calls:
            if call.nested:
                continue
            for tensor in call.outputs:
                self._producer[id(tensor)] = call
            for tensor in call.inputs:
                self._consumers.setdefault(id(tensor), []).append(call)

    @property
    def model(self) -> keras.Model:
        """A functional model of the traced calls (nested models inlined), sharing the layers."""
        if self._model is None:
            outputs = self.outputs[0] if len(self.outputs) == 1 else self.outputs
            self._model = keras.Model(self.inputs, outputs, name=self.name)
        return self._model

    def producer(self, tensor) -> LayerCall | None:
        """The (leaf) call that produced `tensor`; `None` for a model input."""
        return self._producer.get(id(tensor))

    def consumers(self, tensor) -> list[LayerCall]:
        """The (leaf) calls that take `tensor` as an input."""
        return list(self._consumers.get(id(tensor), []))

    def parents(self, call: LayerCall) -> list[LayerCall]:
        """The calls producing `call`'s inputs (model inputs have none)."""
        found = (self.producer(t) for t in call.inputs)
        return [p for p in found if p is not None]

    def leaf_calls(self) -> list[LayerCall]:
        """Every call of a layer that is not a nested model."""
        return [call for call in self.calls if not call.nested]

    def find(self, path: str) -> list[LayerCall]:
        """The calls whose path is `path`, or whose layer name is `path` (bare inner names)."""
        exact = [call for call in self.calls if call.path == path]
        if exact:
            return exact
        return [call for call in self.calls if call.path.split(PATH_SEP)[-1] == path]

    def times_called(self, layer: keras.layers.Layer) -> int:
        """How many calls of `layer` the graph holds (more than one for a shared layer)."""
        return sum(call.layer is layer for call in self.calls)


def is_graph_model(obj) -> bool:
    """True for a functional or Sequential `keras.Model` (one whose layer graph can be read)."""
    names = {cls.__name__ for cls in type(obj).__mro__}
    return isinstance(obj, keras.Model) and bool({"Functional", "Sequential"} & names)


def is_pooling(layer) -> bool:
    """True for Keras pooling layers, spatial or global (`MaxPooling2D`, `GlobalMaxPooling1D`)."""
    return "Pooling" in type(layer).__name__ and not isinstance(layer, keras.Model)


def is_global_pooling(layer) -> bool:
    """True for `GlobalAveragePooling*D` / `GlobalMaxPooling*D`."""
    return is_pooling(layer) and type(layer).__name__.startswith("Global")


def is_head_layer(call: LayerCall) -> bool:
    """True for a layer of a classifier head: Dense, Flatten, Dropout, activations, ...

    Merges (Add, Concatenate, ...) and normalisations count only on feature
    vectors (rank-2 outputs), as in the lab's DeepID whose `add_1` sums two Dense layers.
    """
    layer = call.layer
    if isinstance(layer, _HEAD_ANY_RANK):
        return True
    ranks = {len(t.shape) for t in call.outputs}
    return isinstance(layer, _HEAD_ON_VECTORS) and ranks == {2}


def has_nested_models(model: keras.Model) -> bool:
    """True when a layer of `model` is itself a functional or Sequential model."""
    return any(is_graph_model(layer) for layer in model.layers)


def as_functional(model: keras.Model) -> keras.Model:
    """A Sequential model's layers (shared, not copied) as a functional model.

    Other models are returned unchanged. Tools that walk a layer graph
    (`clone_model(call_function=...)`, tf-keras-vis) need the functional form.

    Raises:
        ValueError: a Sequential model that has not been built (no input shape yet).

    Example:

    >>> import keras
    >>> model = as_functional(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    >>> type(model).__name__, [type(layer).__name__ for layer in model.layers]
    ('Functional', ['InputLayer', 'Dense'])
    """
    if not isinstance(model, keras.Sequential):
        return model
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        raise ValueError(
            f"Sequential model '{model.name}' is not built yet: it has no input shape (and "
            "no weights). Build it first, e.g. model.build((None, height, width, channels)), "
            "or start it with keras.Input(shape)."
        ) from None
    return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name)


def trace(model: keras.Model, inline: bool | None = None) -> Graph:
    """Replays `model` (nested models inlined) and records every layer call.

    Args:
        model: a functional or Sequential model (built).
        inline: enter nested functional/Sequential models. `None` (the default)
            enters them unless two of them hold layers of the same name (Keras
            then cannot build the inlined graph), in which case they are kept
            as single calls; `True` raises then.

    Returns:
        The `Graph`; `graph.model` is the flat functional model sharing `model`'s layers.

    Raises:
        TypeError: `model` is a subclassed model (it has no layer graph).
        ValueError: `inline=True` and layer names repeat across nested models.

    Example:

    >>> import keras
    >>> backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                             keras.layers.Conv2D(4, 3, name="out")], name="backbone")
    >>> graph = trace(keras.Sequential([keras.Input((8, 8, 3)), backbone,  # e.g. a ResNet50
    ...                                 keras.layers.GlobalAveragePooling2D()]))
    >>> graph.find("out")[0].path
    'backbone/out'
    """
    if not is_graph_model(model):
        raise TypeError(
            f"trace needs a functional or Sequential model. Received a subclassed model of "
            f"type {type(model).__name__}, whose layers are wired in Python by its call()."
        )
    model = as_functional(model)
    try:
        return _trace(model, inline=inline is not False)
    except ValueError as err:
        if "should be unique" not in str(err) or inline is False:
            raise
        if inline:
            raise ValueError(
                f"Model '{model.name}' cannot be flattened into one graph: some layers appear "
                f"under the same name in more than one nested model ({err}). Rename them "
                "(each layer name must be unique once the nested models are inlined)."
            ) from None
        return _trace(model, inline=False)


def _trace(model: keras.Model, inline: bool) -> Graph:
    calls: list[LayerCall] = []
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), model.input
    )
    outputs = _replay(model, inputs, calls, prefix="", inline=inline)
    return Graph(name=model.name, calls=calls, inputs=inputs,
                 outputs=keras.tree.flatten(outputs), inlined=inline)


def flatten_nested(model: keras.Model) -> keras.Model:
    """`model` as one functional graph, nested functional/Sequential models inlined.

    Layer names are kept and the layers themselves are shared (the same
    weights); a model without nested models comes back as `as_functional(model)`.

    Raises:
        ValueError: two layers of the inlined graph have the same name.

    Example:

    >>> import keras
    >>> backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                             keras.layers.Conv2D(4, 3, name="out")], name="backbone")
    >>> transfer = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255),
    ...                              backbone, keras.layers.GlobalAveragePooling2D()])
    >>> flat = flatten_nested(transfer)  # e.g. Sequential([Rescaling, ResNet50, GAP, Dense])
    >>> flat.get_layer("out") is backbone.get_layer("out")  # the same layers, inlined
    True
    """
    model = as_functional(model)
    if not has_nested_models(model):
        return model
    return trace(model, inline=True).model


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model` and of its nested models, without InputLayers or the models.

    Example:

    >>> import keras
    >>> backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                             keras.layers.Conv2D(4, 3, name="out")], name="backbone")
    >>> transfer = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255),
    ...                              backbone, keras.layers.GlobalAveragePooling2D()])
    >>> [type(layer).__name__ for layer in leaf_layers(transfer)]
    ['Rescaling', 'Conv2D', 'Conv2D', 'GlobalAveragePooling2D']
    """
    found = []
    for layer in model.layers:
        if is_graph_model(layer):
            found.extend(leaf_layers(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            found.append(layer)
    return found


def _replay(model: keras.Model, inputs, calls: list[LayerCall], prefix: str,
            root=None, actual=None, inline: bool = True):
    """Calls `model`'s layers on `inputs`, recording each call; returns the outputs.

    A nested model is replayed on the tensor `actual` it was called on: Keras
    would give a clone started from an intermediate tensor placeholders of its
    own, so the clone starts from the root input `root` and every layer reading
    it reads `actual` instead (connected to the outer graph).
    """

    def swap(t):
        return actual if actual is not None and t is root else t

    def call(layer, *args, **kwargs):
        args, kwargs = keras.tree.map_structure(swap, (args, kwargs))
        tensors = [t for t in keras.tree.flatten((args, kwargs)) if _is_tensor(t)]
        if inline and is_graph_model(layer):
            inner = as_functional(layer)
            if len(keras.tree.flatten(inner.input)) != 1 or len(tensors) != 1:
                raise ValueError(
                    f"Nested model '{layer.name}' takes {len(keras.tree.flatten(inner.input))} "
                    "inputs; only single-input nested models can be inlined."
                )
            top = root if root is not None else keras.tree.flatten(inputs)[0]
            structure = keras.tree.pack_sequence_as(inner.input, [top])
            out = _replay(inner, structure, calls, prefix + layer.name + PATH_SEP,
                          root=top, actual=tensors[0], inline=True)
            calls.append(LayerCall(layer, prefix + layer.name, tensors,
                                   keras.tree.flatten(out), nested=True))
            return out
        out = layer(*args, **kwargs)
        calls.append(LayerCall(layer, prefix + layer.name, tensors, keras.tree.flatten(out)))
        return out

    clone = keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call
    )
    return clone.outputs[0] if len(clone.outputs) == 1 else clone.outputs


def _is_tensor(value) -> bool:
    return isinstance(value, keras.KerasTensor)


__all__ = [
    "PATH_SEP",
    "Graph",
    "LayerCall",
    "as_functional",
    "flatten_nested",
    "has_nested_models",
    "is_global_pooling",
    "is_graph_model",
    "is_head_layer",
    "is_pooling",
    "leaf_layers",
    "trace",
]
