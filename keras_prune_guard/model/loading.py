"""The lab's DeepID network, rebuilt layer by layer with the lab's layer names."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
from keras import layers

from keras_prune_guard._fs.paths import path_problem
from keras_prune_guard.model.surgery import as_functional, copy_weights_by_name

#: Input shape of the CSAW-HackML DeepID network (height, width, channels).
DEEPID_INPUT_SHAPE = (55, 47, 3)


def deepid(
    num_classes: int = 1283,
    input_shape: tuple[int, int, int] = DEEPID_INPUT_SHAPE,
    input_scale: float | None = None,
) -> keras.Model:
    """Builds the CSAW-HackML "DeepID" face classifier.

    The layer names are the lab's (`conv_1` ... `pool_3`, `fc_1`, `fc_2`,
    `output`), so the lab's weights-only `.h5` files load with
    `model.load_weights(path)`.

    Args:
        num_classes: size of the softmax output. Defaults to 1283.
        input_shape: (height, width, channels). Defaults to (55, 47, 3).
        input_scale: when given, a `Rescaling(input_scale)` layer named
            `input_scale` follows the input, so the model takes raw 0..255
            pixels while its weights expect scaled ones (the hackml2020 nets
            use 1/255). Defaults to `None` (no rescaling, the lab3 net).

    Returns:
        An uncompiled functional `keras.Model` named `deepid`.

    Example:

    >>> model = deepid(num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    if input_scale is not None:
        x = layers.Rescaling(input_scale, name="input_scale")(x)
    x = layers.Conv2D(20, 4, activation="relu", name="conv_1")(x)
    x = layers.MaxPooling2D(2, name="pool_1")(x)
    x = layers.Conv2D(40, 3, activation="relu", name="conv_2")(x)
    x = layers.MaxPooling2D(2, name="pool_2")(x)
    x = layers.Conv2D(60, 3, activation="relu", name="conv_3")(x)
    pool_3 = layers.MaxPooling2D(2, name="pool_3")(x)
    fc_1 = layers.Dense(160, name="fc_1")(layers.Flatten(name="flatten_1")(pool_3))
    conv_4 = layers.Conv2D(80, 2, activation="relu", name="conv_4")(pool_3)
    fc_2 = layers.Dense(160, name="fc_2")(layers.Flatten(name="flatten_2")(conv_4))
    x = layers.Add(name="add_1")([fc_1, fc_2])
    x = layers.Activation("relu", name="activation_1")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="deepid")


#: Architectures `load_network` can rebuild for a weights-only file.
ARCHITECTURES = {"deepid": deepid}
#: `input_scale` values: the factor the network's weights expect raw pixels multiplied by.
INPUT_SCALES = {"raw": None, "unit": 1.0 / 255.0}


def load_network(
    model_path: str | os.PathLike | None = None,
    *,
    weights_path: str | os.PathLike | None = None,
    architecture: str = "deepid",
    input_scale: str = "raw",
    safe_mode: bool = True,
) -> keras.Model:
    """Loads a classifier as a flat functional model taking raw 0..255 pixels.

    Give exactly one of:

    - `model_path`: a full model, `.keras` (loaded by Keras with `safe_mode`) or
      legacy `.h5` with a `model_config` (refused when its config holds a
      `Lambda` layer, whose Python bytecode would run on loading, unless
      `safe_mode=False`).
    - `weights_path`: a weights-only `.h5` (the lab's Keras 2.3.1 files, or a
      Keras 3 `.weights.h5`) for `architecture`; the number of classes is read
      from the file (the kernel of layer `output`), layer names and weight
      shapes are checked before loading.

    Args:
        model_path: a full `.keras` or `.h5` model file. Defaults to `None`.
        weights_path: a weights-only `.h5` file. Defaults to `None`.
        architecture: network to rebuild for `weights_path`; one of
            `ARCHITECTURES` ("deepid"). Defaults to "deepid".
        input_scale: "raw" (the network takes 0..255 pixels, like lab3) or
            "unit" (it expects pixels/255, like the hackml2020 nets; a
            `Rescaling(1/255)` layer named `input_scale` is put after the input
            so the returned model still takes raw pixels). Defaults to "raw".
        safe_mode: refuse to deserialize Python lambdas. Pass `False` only for
            a file you trust. Defaults to `True`.

    Returns:
        An uncompiled functional `keras.Model` whose layers are reachable by
        name (`model.get_layer("pool_3")`); a Sequential model is turned into
        a functional one (a warning is given for nested sub-models, which are
        kept as they are). A subclassed model saved whole (such as a GoodNet)
        is returned as Keras loads it, for inference.

    Raises:
        ValueError: both or neither path given, unknown `architecture` or
            `input_scale`, missing/unreadable/unsuitable file, refused `Lambda`.

    Example:

    >>> import tempfile
    >>> path = f"{tempfile.mkdtemp()}/bd.weights.h5"  # e.g. the lab's "lab3_bd_weights.h5"
    >>> deepid(num_classes=10).save_weights(path)
    >>> model = load_network(weights_path=path)
    >>> model.get_layer("pool_3").output.shape, model.output_shape
    ((None, 5, 4, 60), (None, 10))
    >>> hack = load_network(weights_path=path, input_scale="unit")  # trained on pixels / 255
    >>> round(hack.get_layer("input_scale").scale * 255, 6)  # so `hack` takes raw pixels
    1.0
    """
    if (model_path is None) == (weights_path is None):
        raise ValueError(
            "Pass exactly one of model_path (a full .keras/.h5 model) and weights_path "
            f"(a weights-only .h5 for `architecture`). Received: model_path={model_path!r}, "
            f"weights_path={weights_path!r}"
        )
    if input_scale not in INPUT_SCALES:
        raise ValueError(
            f"input_scale must be one of {list(INPUT_SCALES)}: 'raw' when the network takes "
            "0..255 pixels, 'unit' when it expects pixels/255. "
            f"Received: input_scale={input_scale!r}"
        )
    if weights_path is not None:
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"Unknown architecture {architecture!r} for weights_path={str(weights_path)!r}; "
                f"known architectures: {list(ARCHITECTURES)}. For another network, pass "
                "model_path= a full .keras/.h5 model instead."
            )
        return _from_weights(Path(os.fspath(weights_path)), architecture, input_scale)
    model = _load_full(Path(os.fspath(model_path)), safe_mode)
    scale = INPUT_SCALES[input_scale]
    return model if scale is None else _prepend_rescaling(model, scale, model_path)


def num_classes_of(model: keras.Model) -> int:
    """Returns the size of a single-output classifier's last axis.

    Works on functional and Sequential models and, by tracing them, on
    subclassed ones that know their `input_shape` (such as a loaded GoodNet).

    Raises:
        ValueError: the model has several outputs, or its output is not (batch, classes).

    Example:

    >>> num_classes_of(deepid(num_classes=7))
    7
    """
    outputs = _graph_tensors(model, "outputs")
    if outputs is None:  # trace the subclassed model on a symbolic batch
        spec = model.compute_output_spec(keras.KerasTensor((None, *image_shape_of(model))))
        shapes = [tuple(t.shape) for t in keras.tree.flatten(spec)]
    else:
        shapes = [tuple(t.shape) for t in outputs]
    if len(shapes) != 1:
        raise ValueError(
            f"Model '{model.name}' has {len(shapes)} outputs; expected one (batch, classes) output."
        )
    shape = shapes[0]
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            f"Model '{model.name}' has output shape {shape}; expected (batch, classes)."
        )
    return int(shape[-1])


def image_shape_of(model: keras.Model) -> tuple[int, int, int]:
    """Returns the (height, width, channels) a single-input image model takes.

    Raises:
        ValueError: the model has several inputs, or its input is not
            (batch, H, W, C) with known sizes.

    Example:

    >>> image_shape_of(deepid())
    (55, 47, 3)
    """
    inputs = _graph_tensors(model, "inputs")
    if inputs is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError(
                f"Model '{model.name}' ({type(model).__name__}) has no known input shape; "
                "expected a built model with (batch, height, width, channels) input."
            )
        shapes = list(shape) if isinstance(shape, list) else [tuple(shape)]
    else:
        shapes = [tuple(t.shape) for t in inputs]
    if len(shapes) != 1:
        raise ValueError(
            f"Model '{model.name}' has {len(shapes)} inputs; expected one image input."
        )
    shape = tuple(shapes[0])
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(
            f"Model '{model.name}' has input shape {shape}; expected (batch, height, width, "
            "channels) with known sizes."
        )
    return tuple(int(d) for d in shape[1:])


def _graph_tensors(model: keras.Model, which: str):
    """`model.inputs`/`outputs` of a graph model; `None` for a subclassed one."""
    if _graph_kind(model) is None:
        return None
    return getattr(model, which)


# --- weights-only files -------------------------------------------------------------------


def _decode(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _weight_shapes(path: Path) -> tuple[str, dict[str, list[tuple[int, ...]]]]:
    """Returns the file's layout ("legacy" or "keras3") and {layer name: weight shapes}."""
    if not path.is_file():
        found = path_problem(path) or "a folder"
        raise ValueError(f"weights_path {path}: found {found}; expected a weights-only .h5 file.")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"weights_path {path}: not a readable HDF5 file ({err}); expected a weights-only "
            ".h5 file (such as the lab's bd_weights.h5)."
        ) from err
    try:
        with f:
            group = f
            if "layer_names" not in f.attrs and isinstance(f.get("model_weights"), h5py.Group):
                group = f["model_weights"]
            if "layer_names" in group.attrs:
                shapes = {}
                for raw in group.attrs["layer_names"]:
                    name = _decode(raw)
                    layer = group[name]
                    names = [_decode(w) for w in layer.attrs.get("weight_names", [])]
                    if names:
                        shapes[name] = [tuple(layer[w].shape) for w in names]
                return "legacy", shapes
            if isinstance(f.get("layers"), h5py.Group):
                shapes = {}
                for key, layer in f["layers"].items():
                    variables = layer.get("vars") if isinstance(layer, h5py.Group) else None
                    if variables is None or not len(variables):
                        continue
                    name = _decode(variables.attrs.get("name", key))
                    shapes[name] = [tuple(variables[str(i)].shape) for i in range(len(variables))]
                return "keras3", shapes
            top = sorted(f.keys())
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(
            f"weights_path {path}: the HDF5 file is damaged or not a Keras weights file ({err})."
        ) from err
    raise ValueError(
        f"weights_path {path}: an HDF5 file without Keras weights (no `layer_names` attribute, "
        f"no `layers` group; top level holds {top}); expected a "
        "weights-only .h5 saved by Keras."
    )


def _from_weights(path: Path, architecture: str, input_scale: str) -> keras.Model:
    layout, shapes = _weight_shapes(path)
    kernel = next((s for s in shapes.get("output", []) if len(s) == 2), None)
    if kernel is None:
        raise ValueError(
            f"weights_path {path}: no layer named 'output' with a 2-D kernel (layers with "
            f"weights: {sorted(shapes)}); expected {architecture} weights, whose last Dense "
            "layer is named 'output'."
        )
    build = ARCHITECTURES[architecture]
    model = build(num_classes=kernel[1], input_scale=INPUT_SCALES[input_scale])
    expected = {
        layer.name: [tuple(w.shape) for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or extra:
        raise ValueError(
            f"weights_path {path}: layers do not match architecture {architecture!r}: missing "
            f"{missing}, unexpected {extra}; expected weights for {sorted(expected)}."
        )
    for name, want in expected.items():
        if shapes[name] != want:
            raise ValueError(
                f"weights_path {path}: layer '{name}' holds weights of shapes {shapes[name]}; "
                f"architecture {architecture!r} expects {want} (a different input size?)."
            )
    try:
        if layout == "legacy":
            model.load_weights(path, by_name=True)
        elif path.name.endswith(".weights.h5"):
            model.load_weights(path)
        else:  # Keras 3 picks the reader from the suffix
            with tempfile.TemporaryDirectory() as tmp:
                link = Path(tmp) / "weights.weights.h5"
                try:
                    link.symlink_to(path.resolve())
                except OSError:  # no symlinks here (Windows without privileges)
                    shutil.copyfile(path, link)
                model.load_weights(link)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"weights_path {path}: Keras could not load the weights ({err}).") from err
    return model


# --- full models ---------------------------------------------------------------------------


def lambda_layers(config) -> list[str]:
    """Names the layers of a serialized model config that hold Python code.

    Finds `Lambda` layers and any function serialized as bytecode
    (`"__lambda__"`), at any depth (nested models, wrappers).

    Args:
        config: a model config (the parsed JSON of `model_config` or `config.json`).

    Returns:
        The names of those layers, in config order, without repeats.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x, name="evil")])
    >>> lambda_layers(model.get_config())  # e.g. json.loads(h5_file.attrs["model_config"])
    ['evil']
    """
    found: list[str] = []

    def walk(node, owner: str | None):
        if isinstance(node, dict):
            inner = node.get("config")
            name = inner.get("name") if isinstance(inner, dict) else None
            if node.get("class_name") in ("Lambda", "__lambda__"):
                label = name if node.get("class_name") == "Lambda" else owner
                label = label or "<unnamed>"
                if label not in found:
                    found.append(label)
            for value in node.values():
                walk(value, name if isinstance(name, str) and "class_name" in node else owner)
        elif isinstance(node, list):
            for value in node:
                walk(value, owner)

    walk(config, None)
    return found


def _refusal(path: Path, names: list[str]) -> str:
    return (
        f"model_path {path}: refusing to load it: Lambda layer(s) {names} hold Python bytecode "
        "that would run while the model loads. If, and only if, you trust this file, pass "
        "safe_mode=False (CLI: --unsafe-deserialization)."
    )


def _check_model_path(path: Path) -> None:
    """Raises unless `path` is an existing file: names loops, folders and SavedModels."""
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(f"model_path {path}: {problem}; expected a .keras or .h5 model file.")
    if not path.is_dir():
        return
    if any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise ValueError(
            f"model_path {path}: a SavedModel folder; repair (and load_network) needs the "
            "network as a .keras or .h5 model file, whose layers can be pruned (a SavedModel "
            "holds only a traced graph; SavedModels are for `eval`)."
        )
    raise ValueError(f"model_path {path}: a folder, not a model file; expected a .keras or .h5 "
                     "model file.")


def _load_full(path: Path, safe_mode: bool) -> keras.Model:
    suffix = path.suffix.lower()
    _check_model_path(path)
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"model_path {path}: not a zip archive; expected a .keras model saved by Keras 3."
            )
        try:
            with zipfile.ZipFile(path) as archive:
                names = lambda_layers(json.loads(archive.read("config.json")))
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"model_path {path}: no readable config.json inside ({err}); expected a .keras "
                "model saved by Keras 3."
            ) from err
    elif suffix in (".h5", ".hdf5"):
        names = lambda_layers(_h5_model_config(path))
        if names and safe_mode:
            raise ValueError(_refusal(path, names))
    else:
        raise ValueError(
            f"model_path {path}: suffix {path.suffix!r}; expected a full model saved as .keras "
            "or .h5/.hdf5 (for weights only, pass weights_path=)."
        )
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as err:
        if names and safe_mode:
            raise ValueError(f"{_refusal(path, names)} Keras says: {_first_words(err)}") from err
        unknown = unknown_classes(_config_of(path))
        if unknown:
            raise ValueError(_unknown_text(path, unknown)) from err
        raise ValueError(
            f"model_path {path}: Keras could not load the model ({type(err).__name__}: "
            f"{_first_words(err)}); expected a model saved by Keras with model.save()."
        ) from err
    return _flat_functional(model, path)


def _first_words(err: Exception, limit: int = 300) -> str:
    """Keras's own reason in one line: the `Exception encountered:` part, or the first line."""
    text = str(err)
    if "Exception encountered: " in text:
        text = text.rsplit("Exception encountered: ", 1)[1]
    text = " ".join(text.strip().split("\n", 1)[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_of(path: Path):
    """The model config of a `.keras` (config.json) or `.h5` (model_config); None if unreadable."""
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        with h5py.File(path, "r") as f:
            return json.loads(_decode(f.attrs["model_config"]))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


def _known_class(node: dict) -> bool:
    name, module = node["class_name"], node.get("module")
    registered = node.get("registered_name")
    if registered and keras.saving.get_registered_object(registered) is not None:
        return True
    if "module" not in node:  # a legacy .h5 config: a Keras layer, or a registered name
        return (keras.saving.get_registered_object(name) is not None
                or hasattr(keras.layers, name) or name in ("Functional", "Sequential", "Model"))
    if isinstance(module, str) and (module == "keras" or module.startswith("keras.")):
        if module.startswith("keras.src"):
            return True  # Keras's own internals (Functional, Sequential)
        try:
            return hasattr(importlib.import_module(module), name)
        except ImportError:
            return False
    return False


def unknown_classes(config) -> list[tuple[str, str | None, str | None]]:
    """The classes a serialized model config names that Keras cannot find.

    A class is known when it is registered (`@keras.saving.register_keras_serializable`,
    as keras_prune_guard's `ChannelMask` and `GoodNetModel` are once the package is
    imported) or lives in a public Keras module.

    Args:
        config: a parsed `config.json` (`.keras`) or `model_config` (`.h5`); `None` gives `[]`.

    Returns:
        `(class_name, module, registered_name)` of each unknown class, in config order,
        without repeats.

    Example:

    >>> foo = {"module": None, "class_name": "Foo", "registered_name": "mylib>Foo", "config": {}}
    >>> config = {"module": "keras", "class_name": "Sequential", "config": {"layers": [foo]}}
    >>> unknown_classes(config)  # e.g. json.loads(zipfile.ZipFile(path).read("config.json"))
    [('Foo', None, 'mylib>Foo')]
    """
    found: list[tuple[str, str | None, str | None]] = []

    def walk(node):
        if isinstance(node, dict):
            name = node.get("class_name")
            if isinstance(name, str) and not name.startswith("__") and name != "function" \
                    and not _known_class(node):
                entry = (name.rsplit(">", 1)[-1], node.get("module"),
                         node.get("registered_name") or (name if ">" in name else None))
                if entry not in found:
                    found.append(entry)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def _unknown_text(path: Path, unknown: list) -> str:
    name, module, registered = unknown[0]
    where = f"module {module!r}" if module else "no module"
    if registered:
        where += f", registered as {registered!r}"
    others = f" (and {len(unknown) - 1} more: {[u[0] for u in unknown[1:]]})" if unknown[1:] \
        else ""
    return (
        f"model_path {path}: names a class Keras does not know: {name!r} ({where}){others}; "
        "expected built-in Keras layers or keras_prune_guard's (for a custom class, import "
        "the code that registers it with @keras.saving.register_keras_serializable, then "
        "load the model from Python)."
    )


def _h5_model_config(path: Path):
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            is_weights = "layer_names" in f.attrs or isinstance(f.get("layers"), h5py.Group)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model_path {path}: not a readable HDF5 file ({err}); expected a full .h5 model."
        ) from err
    if raw is None:
        hint = " It holds weights only: pass weights_path= (and architecture=)."
        hint = hint if is_weights else ""
        raise ValueError(
            f"model_path {path}: no `model_config` attribute; expected a full model saved with "
            f"model.save('....h5').{hint}"
        )
    try:
        return json.loads(_decode(raw))
    except ValueError as err:
        raise ValueError(f"model_path {path}: `model_config` is not valid JSON ({err}).") from err


def _graph_kind(model) -> str | None:
    names = {cls.__name__ for cls in type(model).__mro__}
    for kind in ("Sequential", "Functional"):
        if kind in names:
            return kind
    return None


def _flat_functional(model: keras.Model, path) -> keras.Model:
    if _graph_kind(model) is None:  # a subclassed model (such as a saved GoodNet): as it is
        return model
    model = as_functional(model)
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        warnings.warn(
            f"model_path {path}: layers {nested} are nested models; their inner layers are "
            "reached with model.get_layer(outer).get_layer(inner), or as 'outer/inner' in "
            "after= (CLI --after), where a ChannelMask inside a nested model goes into a "
            "copy of the network with the nested models inlined.",
            stacklevel=4,
        )
    return model


def _prepend_rescaling(model: keras.Model, scale: float, path) -> keras.Model:
    if _graph_kind(model) is None:
        raise ValueError(
            f"model_path {path}: input_scale='unit' needs a functional or Sequential model to "
            f"put a Rescaling layer in; this is a subclassed {type(model).__name__}. Make it "
            "take raw pixels itself and pass input_scale='raw'."
        )
    if len(model.inputs) != 1:
        raise ValueError(
            f"model_path {path}: input_scale='unit' needs a single-input model; this one has "
            f"{len(model.inputs)} inputs."
        )
    if any(layer.name == "input_scale" for layer in model.layers):
        raise ValueError(
            f"model_path {path}: the model already has a layer named 'input_scale'; it takes "
            "raw pixels already, pass input_scale='raw'."
        )
    source = model.inputs[0]
    first = model.layers[0]
    name = first.name if isinstance(first, keras.layers.InputLayer) else "input"
    inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype, name=name)
    scaled = keras.layers.Rescaling(scale, name="input_scale")(inputs)

    def call(layer, *args, **kwargs):  # layers fed by the raw input read the scaled one
        def swap(t):
            return scaled if t is inputs else t

        args, kwargs = keras.tree.map_structure(swap, (args, kwargs))
        return layer(*args, **kwargs)

    # (input_tensors=scaled would make Keras give the clone fresh placeholder inputs)
    structure = keras.tree.pack_sequence_as(model.input, [inputs])  # [x] or x, as the model's
    clone = keras.models.clone_model(model, input_tensors=structure, call_function=call)
    scaled_model = keras.Model(inputs, clone.outputs, name=model.name)
    copy_weights_by_name(model, scaled_model)
    return scaled_model
