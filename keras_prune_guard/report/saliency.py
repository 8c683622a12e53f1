"""Saliency maps of B and B' (tf-keras-vis), trigger shares and a comparison figure."""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.data.checks import check_model_on
from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.graph import as_functional, flatten_nested, is_graph_model

#: Methods understood by `saliency_maps`.
METHODS = ("saliency", "smoothgrad", "gradcam")

_CONV_2D = (
    keras.layers.Conv2D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Conv2DTranspose,
)
_BATCH = 32


def gradcam_layer(model: keras.Model) -> str:
    """Returns the convolution Grad-CAM reads when no `penultimate_layer` is given.

    With a `ChannelMask`, that is the last 2-D convolution feeding the mask
    (`conv_3` on the lab's DeepID with a mask after `pool_3`), so the masked
    channels weigh nothing in the map. Without one, it is the last convolution
    that every path from the input to the output goes through (also `conv_3`
    on the lab's DeepID, whose `conv_4` is bypassed by the `fc_1` branch); a
    plain chain of layers gets its last convolution. When no convolution
    carries every path, the last convolution is used.

    Args:
        model: a functional or Sequential model.

    Returns:
        The layer name.

    Raises:
        ValueError: the model has no 2-D convolution layer.

    Example:

    >>> gradcam_layer(insert_channel_mask(deepid()))
    'conv_3'
    """
    _refuse_subclassed_gradcam(model)
    model = graph_view(model)
    order = [layer.name for layer in model.layers]
    convs = [layer.name for layer in model.layers if isinstance(layer, _CONV_2D)]
    if not convs:
        raise ValueError(
            f"Model '{model.name}' has no 2-D convolution layer for Grad-CAM; its layers "
            f"are {order}. Use method='saliency' or 'smoothgrad' instead."
        )
    parents, inputs, outputs = _layer_graph(model)
    masks = [layer.name for layer in model.layers if isinstance(layer, ChannelMask)]
    if masks:
        feeding = _ancestors(parents, masks[-1])
        before = [name for name in convs if name in feeding]
        if before:
            return before[-1]
    for name in reversed(convs):
        if not _reachable_avoiding(parents, outputs, inputs, avoid=name):
            return name
    return convs[-1]


def make_visualizer(model: keras.Model, method: str = "saliency") -> Any:
    """Builds the tf-keras-vis visualiser `saliency_maps` uses, on a clone of `model`.

    The clone's output activation is made linear (`ReplaceToLinear`), so the
    score is the logit, not the softmax; `model` itself is not changed. A
    `ChannelMask` keeps its pruned channels in the clone (checked here).

    Args:
        model: the classifier (B, B' or any single-input, single-output model).
        method: one of `METHODS`. Defaults to "saliency".

    Returns:
        A `tf_keras_vis.saliency.Saliency` or `tf_keras_vis.gradcam.Gradcam`;
        its `.model` is the modified clone.

    Raises:
        ValueError: unknown method, or a model with several inputs or outputs.
        RuntimeError: the clone's channel mask differs from the model's.

    Example:

    >>> vis = make_visualizer(masked_model, "gradcam")
    >>> find_channel_mask(vis.model).pruned_channels()
    """
    _check_method(method)
    if method == "gradcam":
        _refuse_subclassed_gradcam(model)
    source, model = model, graph_view(model)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"Model '{model.name}' has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; saliency maps need exactly one of each."
        )
    # tf-keras-vis imports scipy and more (seconds): only when a map is drawn.
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    cls = Gradcam if method == "gradcam" else Saliency
    vis = cls(model, model_modifier=ReplaceToLinear(), clone=True)
    _check_masks_survived(source, vis.model)
    return vis


def saliency_maps(
    model: keras.Model,
    images: np.ndarray,
    *,
    method: str = "saliency",
    class_index: int | Sequence[int] | np.ndarray | None = None,
    penultimate_layer: str | None = None,
    smooth_samples: int = 20,
    smooth_noise: float = 0.2,
) -> np.ndarray:
    """Computes one saliency map per image, each scaled to [0, 1].

    Args:
        model: the classifier, taking the images as given (raw 0..255 pixels
            for the lab's nets). Its softmax is replaced by a linear output in
            a clone before the gradients are taken.
        images: (N, H, W, C) or one (H, W, C) image; converted to float32.
        method: "saliency" (vanilla gradient, max |d score / d pixel| over the
            colour channels), "smoothgrad" (the same averaged over
            `smooth_samples` noisy copies) or "gradcam" (Grad-CAM on
            `penultimate_layer`, resized to H x W). Defaults to "saliency".
        class_index: the class whose score is explained: an int for every
            image, or one per image. Defaults to `None`, each image's
            predicted class.
        penultimate_layer: Grad-CAM's convolution. Defaults to `None`,
            `gradcam_layer(model)` (`conv_3` on the lab's DeepID, with or
            without a channel mask).
        smooth_samples: noisy copies per image for "smoothgrad". Defaults to 20.
        smooth_noise: noise standard deviation for "smoothgrad", as a fraction
            of each image's value range. Defaults to 0.2.

    Returns:
        float32 array (N, H, W); each map min-max scaled to [0, 1] (a constant
        map becomes all zeros).

    Raises:
        ValueError: unknown method, images of the wrong shape, a class index
            out of range or of the wrong length, a `penultimate_layer` that is
            not a convolution of the model, bad smoothing settings.

    Example:

    >>> maps = saliency_maps(model, faces, method="gradcam")
    >>> maps.shape
    (8, 55, 47)
    """
    _check_method(method)
    if method == "gradcam":
        _refuse_subclassed_gradcam(model)
    model = graph_view(model)
    images = _checked_images(model, images, "images")
    n = len(images)
    if n == 0:
        return np.zeros((0, *images.shape[1:3]), dtype="float32")
    classes = _checked_classes(model, images, class_index)
    layer = None
    if method == "gradcam":
        layer = _checked_conv(model, penultimate_layer)
    elif method == "smoothgrad" and (int(smooth_samples) < 1 or smooth_noise < 0):
        raise ValueError(
            f"smoothgrad needs smooth_samples >= 1 and smooth_noise >= 0. Received: "
            f"smooth_samples={smooth_samples}, smooth_noise={smooth_noise}"
        )

    from tf_keras_vis.utils.scores import CategoricalScore  # costly import, as above

    vis = make_visualizer(model, method)
    maps = []
    with _quiet_structure_warning():
        for start in range(0, n, _BATCH):
            x = images[start : start + _BATCH]
            score = CategoricalScore([int(c) for c in classes[start : start + _BATCH]])
            if method == "gradcam":
                out = vis(
                    score,
                    x,
                    penultimate_layer=layer,
                    seek_penultimate_conv_layer=False,
                    normalize_cam=False,
                )
            else:
                out = vis(
                    score,
                    x,
                    smooth_samples=int(smooth_samples) if method == "smoothgrad" else 0,
                    smooth_noise=float(smooth_noise),
                    normalize_map=False,
                )
            maps.append(np.asarray(out, dtype="float32").reshape(len(x), *images.shape[1:3]))
    return _normalise(np.concatenate(maps, axis=0))


def trigger_share(maps: np.ndarray, region: np.ndarray | tuple[int, int, int, int]) -> np.ndarray:
    """Returns the share of each map's total mass that lies inside `region`.

    Args:
        maps: (N, H, W) non-negative maps (or one (H, W) map).
        region: a boolean (H, W) mask for every map, a boolean (N, H, W) mask
            per map, or `(row_start, row_stop, col_start, col_stop)` with
            exclusive stops (the lab's sunglasses: `(15, 35, 0, 47)`).

    Returns:
        float64 array (N,) in [0, 1]; a map whose total is 0 gives 0.

    Raises:
        ValueError: maps with negative values or of the wrong rank, a mask of
            the wrong shape, or a tuple outside the maps' bounds.

    Example:

    >>> trigger_share(np.ones((1, 4, 4)), (0, 2, 0, 4))
    array([0.5])
    """
    maps = np.asarray(maps, dtype="float64")
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W) or (H, W). Received shape {maps.shape}")
    if maps.size and maps.min() < 0:
        raise ValueError(
            f"maps must be non-negative to measure shares; found a minimum of {maps.min():g}"
        )
    mask = region_mask(region, maps.shape)
    total = maps.sum(axis=(1, 2))
    inside = (maps * mask).sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, inside / safe, 0.0)


def region_mask(
    region: np.ndarray | tuple[int, int, int, int], shape: tuple[int, ...]
) -> np.ndarray:
    """Turns a `trigger_share` region into a boolean mask broadcastable to `shape`.

    Args:
        region: boolean (H, W) or (N, H, W) array, or a
            `(row_start, row_stop, col_start, col_stop)` tuple, stops exclusive.
        shape: the maps' shape, (N, H, W).

    Returns:
        A boolean array of shape (H, W) or (N, H, W).

    Raises:
        ValueError: wrong mask shape, or a tuple that is not 4 ints with
            0 <= start < stop <= size.

    Example:

    >>> region_mask((1, 3, 0, 2), (1, 4, 4)).sum()
    4
    """
    height, width = shape[-2:]
    if isinstance(region, tuple | list):
        if len(region) != 4 or not all(isinstance(v, int | np.integer) for v in region):
            raise ValueError(
                "region tuple must be 4 ints (row_start, row_stop, col_start, col_stop). "
                f"Received: {region}"
            )
        r0, r1, c0, c1 = (int(v) for v in region)
        if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
            raise ValueError(
                f"region {tuple(region)} is outside maps of size {height}x{width}: expected "
                f"0 <= row_start < row_stop <= {height} and 0 <= col_start < col_stop <= {width}"
            )
        mask = np.zeros((height, width), dtype=bool)
        mask[r0:r1, c0:c1] = True
        return mask
    mask = np.asarray(region)
    if mask.dtype != bool or mask.shape not in {(height, width), tuple(shape)}:
        raise ValueError(
            f"region mask must be boolean of shape {(height, width)} or {tuple(shape)}. "
            f"Received dtype {mask.dtype}, shape {mask.shape}"
        )
    return mask


def comparison_figure(
    models: Mapping[str, keras.Model],
    clean: np.ndarray,
    triggered: np.ndarray,
    out_path: str | os.PathLike,
    *,
    method: str = "saliency",
    trigger_region: np.ndarray | tuple[int, int, int, int] | None = None,
    max_pairs: int = 4,
    title: str | None = None,
) -> dict:
    """Draws what each model looks at on the same faces without and with the trigger.

    Rows come two per pair (the clean face, then the same face triggered);
    the first column is the input, then one column per model with its map
    over the face, titled with that model's predicted class. The trigger
    region, when given, is outlined.

    Args:
        models: display name -> model, e.g. `{"B": bd, "B' (X=10)": pruned}`.
        clean: (N, H, W, C) clean images.
        triggered: (N, H, W, C) the same faces with the trigger, row for row.
        out_path: the `.png` to write (atomically).
        method: a `saliency_maps` method. Defaults to "saliency".
        trigger_region: a `trigger_share` region; when given, the mean share
            of each model's maps inside it is returned, over all N pairs.
            Defaults to `None`.
        max_pairs: pairs drawn (the first ones). Defaults to 4.
        title: figure title. Defaults to `None` (names the method).

    Returns:
        `{"path": str, "pairs": N, "pairs_plotted": k, "shares": {name:
        {"clean": float, "triggered": float}} or None, "predictions": {name:
        {"clean": [N ints], "triggered": [N ints]}}}`.

    Raises:
        ValueError: no models, images of different or wrong shapes, no
            pairs, `max_pairs` < 1, an `out_path` not ending in `.png`, or any
            `saliency_maps` error.

    Example:

    >>> info = comparison_figure({"B": bd, "B'": pruned}, clean, sunglasses,
    ...                          "figs/saliency.png", trigger_region=(15, 35, 0, 47))
    >>> info["shares"]["B"]["triggered"]
    """
    _check_method(method)
    if not models:
        raise ValueError("models must name at least one model, e.g. {'B': model}. Received {}")
    if not str(out_path).lower().endswith(".png"):
        raise ValueError(f"out_path must end in .png. Received: {out_path}")
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be >= 1. Received: {max_pairs}")
    clean = np.asarray(clean, dtype="float32")
    triggered = np.asarray(triggered, dtype="float32")
    if clean.shape != triggered.shape or clean.ndim != 4 or len(clean) == 0:
        raise ValueError(
            "clean and triggered must be non-empty (N, H, W, C) arrays of the same shape, "
            f"row i the same face. Received shapes {clean.shape} and {triggered.shape}"
        )
    n = len(clean)
    k = min(int(max_pairs), n)
    if trigger_region is not None:
        region_mask(trigger_region, (n, *clean.shape[1:3]))  # fail early on a bad region
    mapped = n if trigger_region is not None else k

    predictions, maps, shares = {}, {}, None
    for name, model in models.items():
        for what, images in (("clean", clean), ("triggered", triggered)):
            check_model_on(model, images, f"{what} images", name)  # the one pixel check
        preds = {
            s: _predict_classes(model, x) for s, x in (("clean", clean), ("triggered", triggered))
        }
        predictions[name] = {s: [int(c) for c in p] for s, p in preds.items()}
        maps[name] = {
            s: saliency_maps(model, x[:mapped], method=method, class_index=preds[s][:mapped])
            for s, x in (("clean", clean), ("triggered", triggered))
        }
    if trigger_region is not None:
        shares = {
            name: {s: float(trigger_share(m, trigger_region).mean()) for s, m in by_set.items()}
            for name, by_set in maps.items()
        }

    fig = _draw(models, clean[:k], triggered[:k], maps, predictions, trigger_region, method, title)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return {
        "path": str(out_path),
        "pairs": n,
        "pairs_plotted": k,
        "shares": shares,
        "predictions": predictions,
    }


def _draw(models, clean, triggered, maps, predictions, region, method, title):

    k, names = len(clean), list(models)
    ncols, nrows = 1 + len(names), 2 * k
    fig = Figure(figsize=(1.7 * ncols, 2.0 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    scale = 255.0 if max(clean.max(), triggered.max()) > 1.0 else 1.0
    for i in range(k):
        for j, (kind, images) in enumerate((("clean", clean), ("triggered", triggered))):
            row = 2 * i + j
            face = np.clip(images[i] / scale, 0.0, 1.0)
            grey = face.mean(axis=-1) if face.shape[-1] in (1, 3) else face[..., 0]
            ax = axes[row, 0]
            ax.imshow(
                face if face.shape[-1] == 3 else grey, cmap=None if face.shape[-1] == 3 else "gray"
            )
            ax.set_title(f"pair {i}: {kind}", fontsize=7)
            for c, name in enumerate(names, start=1):
                ax = axes[row, c]
                ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
                ax.imshow(maps[name][kind][i], cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0)
                ax.set_title(f"{name}: class {predictions[name][kind][i]}", fontsize=7)
                _outline(ax, region, i, Rectangle)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"{method} maps: clean vs triggered", fontsize=9)
    return fig


def _outline(ax, region, index, rectangle) -> None:
    if region is None:
        return
    if isinstance(region, tuple | list):
        r0, r1, c0, c1 = region
        ax.add_patch(
            rectangle(
                (c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="cyan", ls="--", lw=0.8
            )
        )
        return
    mask = np.asarray(region)
    mask = mask[index] if mask.ndim == 3 else mask
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)


def _normalise(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    out = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)
    return out.astype("float32")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {list(METHODS)}.")


def _checked_images(model: keras.Model, images, what: str) -> np.ndarray:
    images = np.asarray(images, dtype="float32")
    if images.ndim == 3:
        images = images[None]
    expected = tuple(model.inputs[0].shape[1:])
    ok = images.ndim == 4 and len(expected) == 3
    ok = ok and all(e is None or e == g for e, g in zip(expected, images.shape[1:], strict=True))
    if not ok:
        raise ValueError(
            f"{what} must be (N, *{expected}) for model '{model.name}'. "
            f"Received shape {images.shape}"
        )
    return images


@contextlib.contextmanager
def _quiet_structure_warning() -> Iterator[None]:
    # A single input passed as a tensor to a model built with `inputs=[x]` (as the
    # surgery clones and tf-keras-vis's list inputs are) makes Keras warn about structure.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The structure of `inputs`")
        yield


def _predict_classes(model: keras.Model, images: np.ndarray) -> np.ndarray:
    with _quiet_structure_warning():
        out = [
            keras.ops.convert_to_numpy(model(images[i : i + 256], training=False))
            for i in range(0, len(images), 256)
        ]
    return np.argmax(np.concatenate(out), axis=-1) if out else np.zeros((0,), "int64")


def _checked_classes(model: keras.Model, images: np.ndarray, class_index) -> np.ndarray:
    n = len(images)
    if class_index is None:
        return _predict_classes(model, images)
    classes = np.asarray(class_index)
    if classes.ndim == 0:
        classes = np.full((n,), classes)
    num_classes = model.outputs[0].shape[-1]
    if (
        classes.shape != (n,)
        or not np.issubdtype(classes.dtype, np.integer)
        or classes.min() < 0
        or (num_classes is not None and classes.max() >= num_classes)
    ):
        raise ValueError(
            f"class_index must be an int or {n} ints in 0..{num_classes - 1} (one per image) "
            f"for model '{model.name}'. Received: {class_index!r}"
        )
    return classes


def _checked_conv(model: keras.Model, name: str | None) -> str:
    if name is None:
        return gradcam_layer(model)
    convs = [layer.name for layer in model.layers if isinstance(layer, _CONV_2D)]
    if name not in convs:
        raise ValueError(
            f"penultimate_layer {name!r} is not a 2-D convolution of model '{model.name}'; "
            f"expected one of {convs}"
        )
    return name


def graph_view(model: keras.Model) -> keras.Model:
    """The functional model tf-keras-vis reads: nested models inlined, layers shared.

    A Sequential model becomes functional, nested functional/Sequential models
    are inlined (so Grad-CAM reaches a backbone's convolutions), and a
    subclassed model is wrapped as `keras.Model(x, model(x))` on its built
    input shape (its maps then explain the score its last layer gives, softmax
    included: the activation inside its own `call` cannot be replaced).

    Example:

    >>> [layer.name for layer in graph_view(transfer_model).layers][:3]
    """
    if is_graph_model(model):
        return flatten_nested(as_functional(model))
    shape = (model.get_build_config() or {}).get("input_shape")
    if shape is None:
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) has not been called yet: call it "
            "on a batch of images first, so its input shape is known."
        )
    inputs = keras.Input(shape=tuple(shape[1:]), name="images")
    return keras.Model(inputs, model(inputs), name=model.name)


def _refuse_subclassed_gradcam(model: keras.Model) -> None:
    if not is_graph_model(model):
        raise ValueError(
            f"Grad-CAM needs the output of a convolution inside the model, and model "
            f"'{model.name}' is a subclassed {type(model).__name__} with no layer graph to "
            "read it from. Use method='saliency' or 'smoothgrad' instead."
        )


def _masks(model: keras.Model) -> list[ChannelMask]:
    """Every ChannelMask of `model`, looking into its sub-models (subclassed ones too)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, ChannelMask):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_masks(layer))
    return found


def _check_masks_survived(model: keras.Model, clone: keras.Model) -> None:
    originals = {lyr.name: lyr for lyr in _masks(model)}
    copies = {lyr.name: lyr for lyr in _masks(clone)}
    for name, mask in originals.items():
        twin = copies.get(name)
        if twin is None or not np.array_equal(twin.mask_values(), mask.mask_values()):
            raise RuntimeError(
                f"ChannelMask '{name}' of model '{model.name}' did not survive the "
                f"visualiser's clone: pruned {mask.pruned_channels()}, clone has "
                f"{None if twin is None else twin.pruned_channels()}"
            )


def _layer_graph(model: keras.Model) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """Parents of each layer, input layer names, output layer names (from the config)."""
    config = model.get_config()
    if "input_layers" not in config:  # Sequential: a chain
        names = [layer.name for layer in model.layers]
        parents = {b: {a} for a, b in itertools.pairwise(names)}
        return parents, set(names[:1]), set(names[-1:])
    parents: dict[str, set[str]] = {}
    for layer in config.get("layers", []):
        found: set[str] = set()
        _collect_history(layer.get("inbound_nodes", []), found)
        parents[layer["name"]] = found
    return parents, _names(config["input_layers"]), _names(config["output_layers"])


def _collect_history(value, found: set[str]) -> None:
    if isinstance(value, dict):
        history = value.get("keras_history")
        if history:
            found.add(history[0])
        for item in value.values():
            _collect_history(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_history(item, found)


def _names(spec) -> set[str]:
    if spec and isinstance(spec[0], str):
        return {spec[0]}
    return {item[0] for item in spec}


def _ancestors(parents: dict[str, set[str]], name: str) -> set[str]:
    seen, stack = set(), list(parents.get(name, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(parents.get(node, ()))
    return seen


def _reachable_avoiding(parents, outputs: set[str], inputs: set[str], avoid: str) -> bool:
    """True when some input reaches some output without passing through `avoid`."""
    seen, stack = set(), [o for o in outputs if o != avoid]
    while stack:
        node = stack.pop()
        if node in inputs:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(p for p in parents.get(node, ()) if p != avoid)
    return False


__all__ = [
    "METHODS",
    "comparison_figure",
    "gradcam_layer",
    "graph_view",
    "make_visualizer",
    "region_mask",
    "saliency_maps",
    "trigger_share",
]
