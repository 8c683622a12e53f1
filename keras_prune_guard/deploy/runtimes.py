"""Exported GoodNets run outside TensorFlow: ONNX Runtime (`.onnx`) and LiteRT (`.tflite`).

`OnnxModel` and `LiteRTModel` behave as `evaluate.ServedModel` does for a
SavedModel: `model(x)` maps float32 (N, H, W, C) raw 0..255 images to (N, N+1)
outputs, `model.input_shape` is (None, H, W, C) and `model.name` names the
file, so `evaluate`, `predict_classes` and `keras-prune-guard eval` score them
like any other model. The runtimes are optional extras, imported only when a
file is opened.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np


class MissingRuntimeError(ImportError, ValueError):
    """The runtime a model file needs is not installed.

    An `ImportError`, and also a `ValueError` so that the command line reports
    it in one line like its other argument errors.
    """


def require(module: str, extra: str, purpose: str):
    """Imports `module`, or raises `MissingRuntimeError` naming the extra that installs it.

    Args:
        module: the module to import (`"onnxruntime"`, `"ai_edge_litert.interpreter"`).
        extra: this package's extra that installs it (`"onnx"`, `"litert"`).
        purpose: what needs it, for the message (`"model.onnx: reading .onnx files"`).

    Returns:
        The module.

    Example:

    >>> ort = require("onnxruntime", "onnx", "reading .onnx files")
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingRuntimeError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed ({err}). "
            f'Install it with: pip install "keras-prune-guard[{extra}]"',
            name=module,
        ) from err


def _existing_file(path: str | os.PathLike, suffix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"{path}: found {found}; expected a {suffix} model file.")
    return path


def _image_input_shape(path: Path, shape, what: str) -> tuple:
    """(None, H, W, C) from a runtime's input shape, or ValueError naming the file."""
    dims = [d if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise ValueError(
            f"{path}: {what} has shape {list(shape)}; expected one (batch, height, width, "
            "channels) image input of known size, as export_goodnet writes."
        )
    return (None, *(int(d) for d in dims[1:]))


def _one_line(err: Exception) -> str:
    """A runtime's error message on one line (the command line prints one line per error)."""
    return " ".join(str(err).split()) or type(err).__name__


def _checked_batch(model, x) -> np.ndarray:
    x = np.asarray(x, dtype="float32")
    if x.ndim != 4 or x.shape[1:] != tuple(model.input_shape[1:]):
        raise ValueError(
            f"Model '{model.name}' takes (N, {', '.join(map(str, model.input_shape[1:]))}) "
            f"images. Received: x of shape {x.shape}"
        )
    return x


class OnnxModel:
    """A GoodNet `.onnx` file run by ONNX Runtime (CPU), called like a Keras model.

    Args:
        path: the `.onnx` file (as `export_goodnet(..., format="onnx")` writes).
        threads: ONNX Runtime's intra-op threads. Defaults to `None` (its
            default: one per physical core).

    Raises:
        FileNotFoundError: no file at `path`.
        MissingRuntimeError: onnxruntime is not installed (`[onnx]` extra).
        ValueError: ONNX Runtime cannot load the file, or it has not one image input.

    Example:

    >>> onnx_goodnet = OnnxModel("saved_models/goodnet_X4.onnx")
    >>> onnx_goodnet(images).argmax(-1)  # in [0, N]; N flags a backdoored input
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        self.path = _existing_file(path, ".onnx")
        ort = require("onnxruntime", "onnx", f"{self.path}: reading .onnx files")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's errors derive from Exception only
            raise ValueError(
                f"{self.path}: ONNX Runtime cannot load it: {_one_line(err)}. Expected an ONNX "
                "model written by export_goodnet (standard ONNX ops only)."
            ) from err
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: has inputs {[i.name for i in inputs]} and outputs "
                f"{[o.name for o in outputs]}; expected one image input and one output."
            )
        self.input_shape = _image_input_shape(self.path, inputs[0].shape, "its input")
        self._input, self._output = inputs[0].name, outputs[0].name
        self.name = self.path.name

    def __call__(self, x, training: bool = False) -> np.ndarray:
        x = _checked_batch(self, x)
        try:
            return self._session.run([self._output], {self._input: x})[0]
        except Exception as err:  # onnxruntime's errors derive from Exception only
            raise ValueError(
                f"{self.path}: ONNX Runtime cannot run it on a batch of {len(x)}: "
                f"{_one_line(err)}"
            ) from err


class LiteRTModel:
    """A GoodNet `.tflite` file run by the LiteRT interpreter, called like a Keras model.

    The file's batch size is resized (`resize_tensor_input`) to the batch at
    hand, up to `batch_size` images per call; longer inputs run in slices. A
    file whose batch size is fixed runs in slices of that size (the last one
    padded).

    Args:
        path: the `.tflite` file (as `export_goodnet(..., format="litert")` writes).
        batch_size: most images per interpreter call. Defaults to 256.
        threads: CPU threads of the interpreter. Defaults to `None`, meaning
            `os.cpu_count()`.

    Raises:
        FileNotFoundError: no file at `path`.
        MissingRuntimeError: ai-edge-litert is not installed (`[litert]` extra).
        ValueError: the interpreter cannot load the file (for example one that
            needs TensorFlow ops, the Flex delegate), or it has not one image input.

    Example:

    >>> litert_goodnet = LiteRTModel("saved_models/goodnet_X4.tflite")
    >>> litert_goodnet(images).argmax(-1)
    """

    def __init__(
        self, path: str | os.PathLike, *, batch_size: int = 256, threads: int | None = None
    ):
        self.path = _existing_file(path, ".tflite")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
        interpreter = require("ai_edge_litert.interpreter", "litert",
                              f"{self.path}: reading .tflite files").Interpreter
        try:
            self._interpreter = interpreter(
                model_path=str(self.path), num_threads=int(threads or os.cpu_count() or 1)
            )
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"{self.path}: the LiteRT interpreter cannot load it: {_one_line(err)}. Expected "
                "a LiteRT model written by export_goodnet (built-in ops only)."
            ) from err
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: has {len(inputs)} inputs and {len(outputs)} outputs; expected "
                "one image input and one output."
            )
        signature = inputs[0]["shape_signature"]
        self.input_shape = _image_input_shape(self.path, signature, "its input")
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]
        self._fixed = int(signature[0]) if int(signature[0]) > 0 else None
        self._shape = tuple(inputs[0]["shape"])
        self.batch_size = self._fixed or int(batch_size)
        self.name = self.path.name

    def __call__(self, x, training: bool = False) -> np.ndarray:
        x = _checked_batch(self, x)
        parts = [self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        if not parts:
            width = self._interpreter.get_output_details()[0]["shape_signature"][-1]
            return np.zeros((0, int(width)), dtype="float32")
        return np.concatenate(parts)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        rows = len(chunk)
        if self._fixed is not None and rows < self._fixed:
            chunk = np.concatenate([chunk, np.zeros((self._fixed - rows, *chunk.shape[1:]),
                                                    dtype=chunk.dtype)])
        try:
            if chunk.shape != self._shape:
                self._shape = None  # until the resize has worked
                self._interpreter.resize_tensor_input(self._input, chunk.shape, strict=True)
                self._interpreter.allocate_tensors()
                self._shape = chunk.shape
            self._interpreter.set_tensor(self._input, chunk)
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"{self.path}: the LiteRT interpreter cannot run it on a batch of "
                f"{len(chunk)}: {_one_line(err)}"
            ) from err
        return self._interpreter.get_tensor(self._output)[:rows].copy()


#: The wrapper class for each file suffix.
RUNTIMES = {".onnx": OnnxModel, ".tflite": LiteRTModel}


def load_runtime_model(path: str | os.PathLike):
    """Opens an exported `.onnx` or `.tflite` GoodNet in its runtime (by suffix).

    Args:
        path: the model file.

    Returns:
        An `OnnxModel` or a `LiteRTModel`.

    Raises:
        ValueError: the suffix is neither `.onnx` nor `.tflite` (and see the classes).

    Example:

    >>> load_runtime_model("saved_models/goodnet_X4.tflite").input_shape
    (None, 55, 47, 3)
    """
    path = Path(path)
    wrapper = RUNTIMES.get(path.suffix.lower())
    if wrapper is None:
        raise ValueError(
            f"{path}: suffix {path.suffix!r}; expected one of {sorted(RUNTIMES)} (an ONNX or "
            "LiteRT file)."
        )
    return wrapper(path)
