"""Writing models: `.keras`, plain `.h5` with the mask folded in, and GoodNets to deploy.

A GoodNet is exported as a SavedModel folder, an ONNX file or a LiteRT file
(`export_goodnet`); each export is loaded back in its own runtime and checked
against the Keras GoodNet before it is renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.data.checks import check_model_on
from keras_prune_guard.deploy.evaluate import ServedModel
from keras_prune_guard.deploy.runtimes import LiteRTModel, MissingRuntimeError, OnnxModel, require
from keras_prune_guard.detect.goodnet import GoodNetModel
from keras_prune_guard.model.surgery import strip_channel_mask


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Saves `model` (`.keras` or `.h5` by suffix) atomically.

    Args:
        model: any Keras model.
        path: the file to write; its suffix picks the format.

    Returns:
        The path written.

    Example:

    >>> save_model(b_prime, "saved_models/bprime_X4.keras")
    """
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ValueError(f"Model path must end in .keras or .h5. Received: {path}")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def save_plain_h5(masked_model: keras.Model, path: str | os.PathLike) -> Path:
    """Folds the mask into the weights and saves a plain-Keras `.h5` (for the lab's eval.py).

    Example:

    >>> save_plain_h5(b_prime, "saved_models/bprime_X4.h5")
    """
    return save_model(strip_channel_mask(masked_model), path)


#: The formats `export_goodnet` writes, and the suffix each path ends in ("" = a folder).
FORMATS = {"savedmodel": "", "onnx": ".onnx", "litert": ".tflite"}
#: Where each format runs in the self-check (for messages).
RUNTIME_NAMES = {"savedmodel": "tf.saved_model.load", "onnx": "ONNX Runtime",
                 "litert": "the LiteRT interpreter"}
#: ONNX opset of the files (tf2onnx 1.17 writes up to 18; onnxruntime >= 1.20 runs them).
ONNX_OPSET = 17
#: The largest output difference the self-check accepts against the Keras GoodNet.
CHECK_ATOL = 1e-5
#: How many images `self_check_images` makes.
CHECK_IMAGE_COUNT = 8


#: What each format's export and self-check import, and the extra that installs it.
RUNTIMES = {"onnx": (("tf2onnx", "onnxruntime"), "onnx"),
            "litert": (("ai_edge_litert.interpreter",), "litert")}


def check_formats(formats, what: str = "formats") -> tuple[str, ...]:
    """Validates export formats and that their converters and runtimes are installed.

    Called before any long work, so a missing `[onnx]` extra fails at once.

    Returns:
        The formats as a tuple, in the order given, without repeats.

    Raises:
        ValueError: an unknown format, or none; `MissingRuntimeError` for a format
            whose packages are not installed.

    Example:

    >>> check_formats(["savedmodel", "onnx"])
    ('savedmodel', 'onnx')
    """

    if isinstance(formats, str):
        formats = [formats]
    out = tuple(dict.fromkeys(formats))
    unknown = [f for f in out if f not in FORMATS]
    if unknown or not out:
        raise ValueError(f"{what} must be some of {sorted(FORMATS)}. Received: "
                         f"{what}={list(formats)}")
    for name in out:
        modules, extra = RUNTIMES.get(name, ((), ""))
        for module in modules:
            require(module, extra, f"{what} {name}")
    return out


class ExportError(ValueError):
    """A GoodNet export that could not be converted, or failed its self-check."""


def export_goodnet(
    goodnet: GoodNetModel,
    path: str | os.PathLike,
    format: str = "savedmodel",  # noqa: A002 - the name `keras.Model.export` uses
    *,
    images=None,
    atol: float = CHECK_ATOL,
    converter_options: dict | None = None,
) -> Path:
    """Writes the GoodNet for deployment, then checks it in its own runtime.

    - `"savedmodel"`: a folder; `tf.saved_model.load(path).serve(images)`,
      float32 (None, H, W, C) -> (None, N+1).
    - `"onnx"`: a `.onnx` file of standard ops (opset 17) for `onnxruntime`;
      input `images` [batch, H, W, C], output `output_0` [batch, N+1].
    - `"litert"`: a `.tflite` file of built-in ops only (no Flex) for
      `ai_edge_litert`; signature `serving_default`, input `images`
      [-1, H, W, C] (allocated for 1 image: `resize_tensor_input`), output
      `output_0`.

    Every format takes raw 0..255 pixels and has a dynamic batch size. The
    result is written to a temporary name beside `path`, loaded in its runtime
    and run on `images` (and on the first image alone); only when it gives every
    image the Keras GoodNet's class, with outputs within `atol`, is it renamed to
    `path`. Otherwise `ExportError` is raised and `path` is left as it was.

    Args:
        goodnet: the `GoodNetModel` to export.
        path: a folder for `"savedmodel"`, a `.onnx` or `.tflite` file otherwise.
        format: `"savedmodel"`, `"onnx"` or `"litert"`. Defaults to `"savedmodel"`.
        images: (N, H, W, C) raw-pixel images to check on. Defaults to `None`,
            meaning `self_check_images(goodnet.image_shape)` (8 seeded images).
        atol: the largest output difference accepted. Defaults to `CHECK_ATOL` (1e-5).
        converter_options: extra converter settings: keyword arguments of
            `tf2onnx.convert.from_function` for `"onnx"` (e.g. `opset`),
            `TFLiteConverter` attributes for `"litert"` (e.g. `optimizations`),
            `keras.Model.export` arguments for `"savedmodel"`. Defaults to `None`.

    Returns:
        The path written.

    Raises:
        ValueError: a bad argument (unknown format, a path with the wrong suffix,
            images of the wrong shape), before anything is written.
        ExportError: the conversion failed, or the written model does not load
            in its runtime or disagrees with the Keras GoodNet.
        MissingRuntimeError: tf2onnx/onnxruntime (extra `[onnx]`) or
            ai-edge-litert (extra `[litert]`) is not installed.

    Example:

    >>> goodnet = GoodNetModel(bad_model, b_prime)
    >>> export_goodnet(goodnet, "saved_models/goodnet_X4")  # SavedModel folder
    >>> export_goodnet(goodnet, "saved_models/goodnet_X4.onnx", format="onnx")
    >>> export_goodnet(goodnet, "saved_models/goodnet_X4.tflite", format="litert",
    ...                images=x_valid[:64])
    """
    path = check_export_path(path, format)
    if not isinstance(goodnet, GoodNetModel):
        raise ValueError(
            f"export_goodnet exports a GoodNetModel. Received: goodnet of type "
            f"{type(goodnet).__name__} ('{getattr(goodnet, 'name', '?')}')"
        )
    if not atol >= 0:
        raise ValueError(f"atol must be a number >= 0. Received: atol={atol}")
    x = _checked_images(goodnet, images)
    expected = goodnet.predict(x, batch_size=256, verbose=0)
    with atomic_path(path, is_dir=format == "savedmodel") as tmp:
        _convert(goodnet, tmp, path, format, dict(converter_options or {}))
        _self_check(tmp, path, format, x, expected, atol)
    return path


def self_check_images(
    image_shape: tuple[int, int, int], count: int = CHECK_IMAGE_COUNT, seed: int = 0
) -> np.ndarray:
    """Deterministic images in the raw 0..255 range: half noise, half smooth gradients.

    Args:
        image_shape: (H, W, C).
        count: how many images. Defaults to `CHECK_IMAGE_COUNT` (8).
        seed: the NumPy seed. Defaults to 0.

    Returns:
        float32 (count, H, W, C) whole-number pixels in 0..255.

    Example:

    >>> self_check_images((55, 47, 3)).shape
    (8, 55, 47, 3)
    """
    rng = np.random.default_rng(seed)
    height, width, channels = image_shape
    noise = rng.uniform(0, 255, (count - count // 2, *image_shape))
    rows = np.linspace(0, 1, height)[None, :, None, None]
    cols = np.linspace(0, 1, width)[None, None, :, None]
    a, b, c = (rng.uniform(0, 255, (count // 2, 1, 1, channels)) for _ in range(3))
    smooth = np.clip(a + (b - a) * rows + (c - a) * cols, 0, 255)
    return np.rint(np.concatenate([noise, smooth])).astype("float32")


def check_export_path(path: str | os.PathLike, format: str) -> Path:
    """Checks that `format` is known and `path` suits it (suffix, file or folder).

    Args:
        path: where the export goes: a folder for "savedmodel", a `.onnx` or
            `.tflite` file for "onnx" or "litert".
        format: one of `FORMATS`.

    Returns:
        `path` as a `Path`.

    Raises:
        ValueError: naming the format or path found and what was expected.

    Example:

    >>> check_export_path("goodnet_X4.onnx", "litert")
    ValueError: path for format='litert' must end in .tflite. Received: path='goodnet_X4.onnx'
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}. Received: format={format!r}")
    path = Path(path)
    suffix = FORMATS[format]
    if suffix and path.suffix.lower() != suffix:
        raise ValueError(
            f"path for format={format!r} must end in {suffix}. Received: path={str(path)!r}"
        )
    named = {s: f for f, s in FORMATS.items() if s}
    if not suffix and path.suffix.lower() in named:
        raise ValueError(
            f"path {str(path)!r} ends in {path.suffix}, the suffix of format="
            f"{named[path.suffix.lower()]!r}; a SavedModel is a folder. Pass format="
            f"{named[path.suffix.lower()]!r}, or a folder path for a SavedModel."
        )
    if (path.is_dir() and suffix) or (path.exists() and not path.is_dir() and not suffix):
        found, wanted = ("a folder", "a file") if suffix else ("a file", "a folder")
        raise ValueError(
            f"path {str(path)!r} is {found}; format={format!r} writes {wanted} there. "
            "Remove it or choose another path."
        )
    return path


def _checked_images(goodnet: GoodNetModel, images) -> np.ndarray:

    if images is None:
        return self_check_images(goodnet.image_shape)
    check_model_on(goodnet, images, "export_goodnet images")  # shape, outputs, pixel range
    if not len(images):
        raise ValueError("export_goodnet needs at least one image to check on. Received: "
                         f"images of shape {np.shape(images)}")
    return np.asarray(images, dtype="float32")


def _convert(goodnet: GoodNetModel, tmp: Path, path: Path, format: str, options: dict) -> None:

    try:
        _WRITERS[format](goodnet, tmp, options)
    except MissingRuntimeError:
        raise
    except Exception as err:  # converters raise their own types (ConverterError, ...)
        hint = " (LiteRT files hold built-in ops only)" if format == "litert" else ""
        raise ExportError(
            f"Could not convert GoodNet '{goodnet.name}' to format={format!r} for {path}: "
            f"{_renamed(err, tmp, path)}{hint}. Nothing was written to {path}."
        ) from err


def _write_savedmodel(goodnet: GoodNetModel, tmp: Path, options: dict) -> None:
    goodnet.export(str(tmp), verbose=False, **options)


def _write_onnx(goodnet: GoodNetModel, tmp: Path, options: dict) -> None:


    tf2onnx = require("tf2onnx", "onnx", f"{tmp.name}: writing ONNX files")
    spec = tf.TensorSpec((None, *goodnet.image_shape), tf.float32, name="images")
    forward = tf.function(lambda images: goodnet(images, training=False), input_signature=[spec])
    options.setdefault("opset", ONNX_OPSET)
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=[spec], **options)
    _name_onnx_output(proto, "output_0")
    tmp.write_bytes(proto.SerializeToString())


def _name_onnx_output(proto, name: str) -> None:
    """Renames the graph's single output to `name` and its batch axes to `batch`."""
    graph = proto.graph
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    graph.output[0].name = name
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def _write_litert(goodnet: GoodNetModel, tmp: Path, options: dict) -> None:

    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}, **options}
    goodnet.export(str(tmp), format="litert", verbose=False, **options)


_WRITERS = {"savedmodel": _write_savedmodel, "onnx": _write_onnx, "litert": _write_litert}


def _load(tmp: Path, format: str):

    return {"savedmodel": ServedModel, "onnx": OnnxModel, "litert": LiteRTModel}[format](tmp)


def _self_check(tmp: Path, path: Path, format: str, x, expected, atol: float) -> None:
    """Raises `ExportError` unless the model at `tmp` loads and agrees with `expected`."""

    where = RUNTIME_NAMES[format]
    try:
        runtime = _load(tmp, format)
        got, first = (np.asarray(runtime(batch)) for batch in (x, x[:1]))
    except MissingRuntimeError:
        raise
    except Exception as err:  # each runtime raises its own types
        raise ExportError(
            f"{path}: the {format} export failed its self-check in {where}: "
            f"{_renamed(err, tmp, path)}. Nothing was written to {path}."
        ) from err
    problems = _disagreements(got, first, expected, atol)
    if problems:
        raise ExportError(
            f"{path}: the {format} export, run in {where} on {len(x)} check images, "
            f"disagrees with the Keras GoodNet: {'; '.join(problems)}. Expected the same class "
            f"for every image and outputs within atol={atol:g}. Nothing was written to {path}."
        )


def _disagreements(got, first, expected, atol: float) -> list[str]:
    """What differs between a runtime's outputs (`got`; `first` for image 0 alone) and Keras's."""
    if got.shape != expected.shape or first.shape != expected[:1].shape:
        return [f"outputs of shape {got.shape} (and {first.shape} for one image) where Keras "
                f"gives {expected.shape}"]
    problems = []
    classes, wanted = got.argmax(-1), expected.argmax(-1)
    differ = np.flatnonzero(classes != wanted)
    if differ.size or first.argmax(-1)[0] != wanted[0]:
        i = int(differ[0]) if differ.size else 0
        problems.append(f"{differ.size} of {len(got)} images get another class (image {i}: "
                        f"{int(classes[i])}, Keras {int(wanted[i])})")
    gap = float(max(np.max(np.abs(got - expected)), np.max(np.abs(first - expected[:1]))))
    if not gap <= atol:
        problems.append(f"outputs differ by up to {gap:.3g}")
    return problems


def _renamed(err: Exception, tmp: Path, path: Path) -> str:
    """The error's text with the temporary path replaced by the final one, first line only."""
    errors = getattr(err, "errors", None)  # tf.lite's ConverterError: one entry per failure
    text = errors[0].error_message if errors else str(err)
    text = text.replace(str(tmp), str(path)).strip()
    text = text.splitlines()[0].removeprefix(f"{path}: ").rstrip(".") if text else ""
    return text or type(err).__name__
