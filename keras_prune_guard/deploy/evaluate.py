"""Scoring models: clean accuracy, attack success rate, GoodNet detection rates."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard._compat import deprecated
from keras_prune_guard._fs.outputs import check_entry
from keras_prune_guard._fs.paths import path_problem
from keras_prune_guard.data.checks import (  # noqa: F401 (check_images, input_shape_of: 0.1)
    check_images,
    check_labels,
    check_model_on,
    input_shape_of,
    is_streamed,
)
from keras_prune_guard.data.distribute import batches, compiled_forward, map_batches
from keras_prune_guard.deploy.runtimes import load_runtime_model
from keras_prune_guard.model.loading import load_network
from keras_prune_guard.results import Scores


class ServedModel:
    """A SavedModel written by `GoodNetModel.export`, loaded without this package.

    Args:
        path: the SavedModel folder.

    Example:

    >>> served = ServedModel("saved_models/goodnet_X4")
    >>> served.predict(images).shape
    (len(images), 1284)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            self._loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, IndexError, KeyError, tf.errors.OpError) as err:
            # IndexError: a truncated variables file ("Read less bytes than requested")
            reason = str(getattr(err, "message", err)).strip().splitlines()[0][:300]
            raise ValueError(
                f"SavedModel {self.path}: TensorFlow could not load it ({type(err).__name__}: "
                f"{reason}); expected a SavedModel folder written by keras-prune-guard."
            ) from None
        if not hasattr(self._loaded, "serve"):
            raise ValueError(
                f"SavedModel {self.path} has no 'serve' endpoint; expected one written by "
                "keras-prune-guard (GoodNetModel.export or keras.Model.export)."
            )
        spec = self._loaded.serve.input_signature[0]
        self.input_shape = tuple(spec.shape.as_list())
        self.name = Path(self.path).name

    def __call__(self, x, training=False):
        return self._loaded.serve(tf.convert_to_tensor(x, tf.float32))


def load_model_for_eval(path: str | os.PathLike, *, safe_mode: bool = True):
    """Loads a model to score: a SavedModel folder, or a .keras, .h5, .onnx or .tflite file.

    `.onnx` and `.tflite` files (GoodNets written by `export_goodnet`) run in
    ONNX Runtime and LiteRT (`runtimes.OnnxModel`, `runtimes.LiteRTModel`).

    Args:
        path: the model's path.
        safe_mode: refuse models that would run code on load (Lambda layers).
            Defaults to `True`.

    Returns:
        A `ServedModel`, `OnnxModel`, `LiteRTModel` or `keras.Model`; all take
        raw 0..255 float32 images.

    A model inside a folder written by `repair` is first checked against the
    folder's `manifest.json` (`outputs.check_entry`): a model of an interrupted
    commit, or one whose files changed, is refused.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a symlink loop or broken symlink, a folder that is not a
            SavedModel, a model that does not match its folder's manifest, or a
            file Keras cannot load.
    """

    path = Path(path)
    check_entry(path)  # first: an entry may be missing only because a commit was interrupted
    expected = "expected a SavedModel folder, a .keras, an .h5, an .onnx or a .tflite file"
    problem = path_problem(path)
    if problem == "no such file":
        raise FileNotFoundError(f"Model not found: {path} ({expected})")
    if problem is not None:
        raise ValueError(f"model {path}: found {problem}; {expected}.")
    if path.is_dir():
        if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
            hint = (" This is an output folder of `repair`: pass one of its goodnet_X*/ "
                    "folders." if (path / "manifest.json").is_file() else "")
            raise ValueError(f"model {path}: found a folder without saved_model.pb "
                             f"({_contents(path)}); {expected} (such as goodnet_X2/ "
                             f"written by `keras-prune-guard repair`).{hint}")
        return ServedModel(path)
    if path.suffix.lower() in (".onnx", ".tflite"):

        return load_runtime_model(path)

    return load_network(path, safe_mode=safe_mode)


def _contents(folder: Path) -> str:
    """`holds a.txt, b/ and 3 more`, or `empty`, for a message."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "empty"
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return f"it holds {', '.join(names[:4])}{more}"


def predict_classes(
    model, x, batch_size: int = 1024, what: str = "images", *,
    strategy: tf.distribute.Strategy | None = None,
) -> np.ndarray:
    """Predicted class of every image, in batches, after checking the image shape.

    Args:
        model: a Keras model or a `ServedModel`.
        x: (N, H, W, C) images in the model's pixel range (raw 0..255 for every
            model this project writes), or a `tf.data.Dataset` of `x` or
            `(x, y)` batches (each batch checked as it comes).
        batch_size: images per call. Defaults to 1024.
        what: name of the images for error messages. Defaults to "images".
        strategy: run under this `tf.distribute` strategy (classes come back in
            input order). Defaults to `None`.

    Returns:
        An int64 (N,) array.

    Raises:
        ValueError: images of the wrong shape, non-finite, or pixels / 255
            (`inputs.check_model_on`), before any class is computed.

    Example:

    >>> predict_classes(goodnet, lab_h5_dataset("test.h5"), strategy=strategy)
    """
    images = x[0] if isinstance(x, tuple) else x  # labels, if any, are not the question here
    check_model_on(model, images, what)  # shape, finite outputs, pixel range
    return _classes_and_labels(model, x, batch_size, what, strategy)[0]


def _classes_and_labels(model, data, batch_size, what, strategy):
    """`(classes, labels)` of arrays `x`, `(x, y)` arrays, or a dataset; labels may be None."""
    if is_streamed(data) or strategy is not None:
        if is_streamed(data):
            data = _checked(model, data, batch_size, what)
        else:
            check_images(model, data[0] if isinstance(data, tuple) else data, what)
        parts = list(map_batches(model, data, strategy=strategy, batch_size=batch_size,
                                 argmax=True))
        classes = np.concatenate([c for c, _ in parts]) if parts else np.zeros((0,), "int64")
        labels = None if any(y is None for _, y in parts) else np.concatenate(
            [y for _, y in parts]) if parts else None
        return classes.astype("int64"), labels
    x, y = data if isinstance(data, tuple) else (data, None)
    return _predict_arrays(model, x, batch_size, what), y


def _checked(model, data, batch_size: int, what: str):
    """Yields the `(x, y)` batches of `data`, each checked with `check_images` first."""
    for x, y in batches(data, batch_size):
        check_images(model, x, what)
        yield (x, y) if y is not None else x


def _predict_arrays(model, x: np.ndarray, batch_size: int, what: str) -> np.ndarray:
    check_images(model, x, what)
    forward = compiled_forward(model) if isinstance(model, keras.Model) else model
    out = [
        np.argmax(np.asarray(forward(np.asarray(x[i : i + batch_size], "float32"))), axis=-1)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).astype("int64") if out else np.zeros((0,), "int64")


def rate(mask: np.ndarray) -> float:
    """Share of True values, in percent (0 for an empty array)."""
    return float(np.mean(mask) * 100.0) if len(mask) else 0.0


def evaluate(
    model,
    test=None,
    poisoned=None,
    *,
    flag_class: int | None = None,
    true_labels=None,
    batch_size: int = 1024,
    strategy: tf.distribute.Strategy | None = None,
    clean=None,
) -> Scores:
    """Scores a model on clean test data and poisoned data, in percent.

    Args:
        model: a Keras model or a `ServedModel`.
        test: `(x, y)` clean test images and true labels. Defaults to `None`.
        poisoned: `(x, y_target)` triggered images and the attacker's target
            label per image (attack success is per image, so multi-target files
            work). Defaults to `None`.
        flag_class: the GoodNet's "backdoored input" class N; when given,
            `detection_rate` (poisoned flagged) and `false_alarm_rate` (clean
            flagged) are measured. Defaults to `None`.
        true_labels: the poisoned images' true classes (N,), -1 where unknown; when
            given, `robust_accuracy` (R-Acc: poisoned images of known class given
            their true class) is measured. Defaults to `None`.
        batch_size: images per call. Defaults to 1024.
        strategy: run the passes under this `tf.distribute` strategy. Defaults
            to `None`.
        clean: the 0.1 name of `test` (deprecated).

    `test` and `poisoned` may also be `tf.data.Dataset`s of `(x, y)` batches
    (e.g. `data.lab_h5_dataset`), read batch by batch.

    Returns:
        `Scores`: `test_accuracy`, `attack_success` and, with `flag_class`,
        `detection_rate` and `false_alarm_rate`, with `true_labels`,
        `robust_accuracy` (None where not measured).

    Example:

    >>> evaluate(goodnet, (x_test, y_test), (x_bd, y_bd), flag_class=1283).detection_rate
    """
    if clean is not None:
        deprecated("evaluate(clean=...)", "evaluate(test=...)")
        test = clean
    scores = Scores()
    check_model_on(model, test, "clean images")
    if test is not None:
        pred, y = _classes_and_labels(model, test, batch_size, "clean images", strategy)
        scores.test_accuracy = rate(pred == y)
        if flag_class is not None:
            scores.false_alarm_rate = rate(pred == flag_class)
    if poisoned is not None:
        pred, y = _classes_and_labels(model, poisoned, batch_size, "poisoned images", strategy)
        scores.attack_success = rate(pred == y)
        if flag_class is not None:
            scores.detection_rate = rate(pred == flag_class)
        if true_labels is not None:
            truth = check_true_labels(true_labels, len(pred))
            known = truth >= 0
            scores.robust_accuracy = rate(pred[known] == truth[known]) if known.any() else None
    return scores


def check_true_labels(true_labels, count: int, what: str = "true_labels") -> np.ndarray:
    """The poisoned images' true classes as int64 (N,), one per poisoned image, -1 where
    unknown (as in the lab's real sunglasses file); robust accuracy counts the known ones."""

    truth = np.asarray(true_labels)
    if truth.ndim == 1 and np.issubdtype(truth.dtype, np.integer) and len(truth) == count:
        known = truth >= 0
        if (truth[~known] != -1).any():
            raise ValueError(f"{what}: found {truth[~known].min()}; expected class labels, "
                             "or -1 where unknown")
        checked = check_labels(np.where(known, truth, 0), count, what)
        return np.where(known, checked, -1)
    return check_labels(truth, count, what)
