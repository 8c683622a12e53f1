"""The one place that tells arrays from streams and checks images and labels on the way in.

Data reaches the library in one of two forms: `(x, y)` arrays, or a stream (a
`tf.data.Dataset` or an iterable of `(x, y)` batches, e.g. `data.lab_h5_dataset`).
`is_streamed` tells them apart, `labelled_pairs` checks the labels of arrays before any
pass, `check_images` checks images against a model before any prediction, and
`first_images` takes a few images of either form.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.data.distribute import batches, compiled_forward
from keras_prune_guard.data.files import check_labels as check_label_values


def is_streamed(data) -> bool:
    """True for a dataset or iterable of batches, False for arrays: `(x, y)`, `x` or None.

    Example:

    >>> import numpy as np
    >>> is_streamed((np.zeros((2, 4, 4, 3)), np.zeros(2))), is_streamed(None)
    (False, False)
    """
    if data is None or (hasattr(data, "shape") and not _is_dataset(data)):
        return False
    return not (isinstance(data, (tuple, list)) and len(data) == 2
                and hasattr(data[0], "shape") and not _is_dataset(data[0]))


def _is_dataset(value) -> bool:

    return isinstance(value, tf.data.Dataset)


def check_labels(y, count: int, what: str, num_classes: int | None = None) -> np.ndarray:
    """Checks labels given as an array and returns them as int64 (N,).

    Args:
        y: the labels: integer class ids, shape (N,) or (N, 1).
        count: the number of images they belong to.
        what: how to name the data in messages (an argument or a file).
        num_classes: when given, labels must be in [0, num_classes).

    Returns:
        The labels as an int64 vector.

    Raises:
        ValueError: one-hot labels (named as such), another rank, non-finite or
            fractional values, a count other than `count`, or a label out of range.

    Example:

    >>> import numpy as np
    >>> check_labels(np.array([0.0, 2.0]), 2, "valid", num_classes=3)
    array([0, 2])
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        onehot = y.shape[0] == count and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
        found = "one-hot labels" if onehot else "a 2-D label array"
        raise ValueError(
            f"{what}: found {found} of shape {y.shape}; expected integer class ids of "
            f"shape (N,)" + (": pass y.argmax(axis=-1)" if onehot else "")
        )
    if y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{what}: found labels of shape {y.shape}; expected integer class "
                         "ids of shape (N,)")
    if len(y) != count:
        raise ValueError(f"{what}: images and labels differ in length: {count} images, "
                         f"{len(y)} labels; expected one label per image")

    return check_label_values(what, y, num_classes=num_classes, field=None)


def labelled_pairs(data, what: str, num_classes: int | None = None):
    """`(x, y)` arrays with their labels checked, or a stream as it is.

    Args:
        data: `(x, y)` arrays or a stream of `(x, y)` batches.
        what: how to name the data in messages.
        num_classes: when given, labels must be in [0, num_classes).

    Returns:
        `(x, y_int64)` for arrays; the stream itself otherwise (its batches are
        checked as they come).

    Example:

    >>> import numpy as np
    >>> x, y = labelled_pairs((np.zeros((2, 55, 47, 3)), np.array([1.0, 0.0])), "valid")
    >>> y
    array([1, 0])
    """
    if is_streamed(data):
        return data
    x, y = data
    if y is None:
        return x, None
    return x, check_labels(y, len(x), what, num_classes)


def check_images(model, x, what: str = "images") -> None:
    """Raises ValueError unless `x` is (N, H, W, C) finite pixels with the model's H, W, C.

    Checked before any model call, so a wrong file never yields made-up classes
    (a NaN image would otherwise come out as class 0, the lab's attack target).

    Args:
        model: a Keras or served model (anything with `input_shape`).
        x: the images.
        what: how to name the images in the message (a file name). Defaults to
            "images".

    Raises:
        ValueError: naming `what`, the shape or value found and the (N, H, W, C)
            shape the model expects.

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> check_images(deepid(), np.zeros((2, 55, 47, 1)), "grey.h5")
    Traceback (most recent call last):
        ...
    ValueError: grey.h5: images of shape (55, 47, 1) ...
    """
    shape = tuple(np.shape(x))
    expected = input_shape_of(model) or (None,) * max(len(shape) - 1, 3)
    found = shape[1:]
    name = getattr(model, "name", "?")
    wants = f"(N, {', '.join(str(d) for d in expected)})"
    if len(shape) != len(expected) + 1 or any(
        e is not None and e != f for e, f in zip(expected, found)
    ):
        hint = ""
        if len(found) == 3 and len(expected) == 3 and found[0] == expected[-1] \
                and tuple(found[1:]) == tuple(expected[:2]):
            hint = " They look channels-first (N, C, H, W): transpose them to (N, H, W, C)."
        raise ValueError(
            f"{what}: images of shape {found} (rank {len(shape)}, batch shape {shape}) do not "
            f"fit model '{name}', which expects {wants} channels-last images.{hint}"
        )
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what}: images of dtype {x.dtype}; model '{name}' expects numeric "
                         f"pixels {wants} (raw 0..255).")
    if x.dtype.kind == "f" and x.size:
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            raise ValueError(
                f"{what}: image {i} holds {x[i][~np.isfinite(x[i])].flat[0]}; model "
                f"'{name}' expects finite pixel values (raw 0..255)."
            )


def input_shape_of(model) -> tuple | None:
    """The (H, W, C) image shape a Keras or served model takes (H, W may be None).

    `None` for a model that does not say (a subclassed model never called on a graph).
    """
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:])


def num_classes_or_none(model) -> int | None:
    """The model's number of classes, or `None` when it has no known output shape."""
    try:
        return int(model.output_shape[-1])
    except (AttributeError, ValueError, TypeError):
        return None


def first_images(data, count: int) -> np.ndarray:
    """The first `count` images of `(x, y)` arrays or of a stream of `(x, y)` batches."""
    if not is_streamed(data):
        return np.asarray(data[0][:count])

    taken, total = [], 0
    for x, _ in batches(data):
        taken.append(x[: count - total])
        total += len(taken[-1])
        if total >= count:
            break
    return np.concatenate(taken)


#: Images of the first batch on which `check_model_on` runs the model.
SANITY_IMAGES = 256


def _first_batch(data, count: int):
    """`(x, y)` of the first `count` images of arrays or a `tf.data.Dataset`; else None.

    Other iterables are not touched: they may be one-shot generators.
    """
    if data is None:
        return None
    if not is_streamed(data):
        x, y = data if isinstance(data, (tuple, list)) else (data, None)
        return np.asarray(x[:count], dtype="float32"), None if y is None else np.asarray(
            y[:count]).reshape(-1)
    if not _is_dataset(data):
        return None
    item = next(iter(data.take(1)), None)
    if item is None:
        return None
    x, y = item if isinstance(item, (tuple, list)) else (item, None)
    x = np.asarray(x, dtype="float32")[:count]
    return x, None if y is None else np.asarray(y).reshape(-1)[:count]


def _classes(model, x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Predicted classes of `x` and whether every output was finite."""


    if isinstance(model, keras.Model):
        forward = compiled_forward(model) if input_shape_of(model) is not None else (
            lambda batch: model(batch, training=False))
    else:
        forward = model
    out = np.asarray(forward(x))
    return out.argmax(axis=-1), bool(np.isfinite(out).all())


def check_unit_pixels(x: np.ndarray, what: str) -> None:
    """Refuses images whose pixels all lie within 0..1 with some fractional: pixels / 255.

    Every model this package writes or loads takes raw 0..255 pixels (a network trained
    on pixels / 255 is loaded with `input_scale='unit'`, which rescales inside it), and
    raw pixels are whole numbers, so such images are in the wrong range. Used where no
    labels tell the range apart (`check_model_on` without labels).

    Args:
        x: images (N, H, W, C).
        what: how to name them (a file or an argument).

    Raises:
        ValueError: naming `what`, the largest pixel value and the fix.

    Example:

    >>> import numpy as np
    >>> check_unit_pixels(np.full((2, 4, 4, 3), 0.5), "faces.h5")
    Traceback (most recent call last):
        ...
    ValueError: faces.h5: found pixel values within 0..1 (max 0.5, fractional); expected raw ...
    """
    x = np.asarray(x)
    if not x.size or x.dtype.kind != "f":
        return
    top = float(x.max())
    if float(x.min()) >= 0 and top <= 1.0 and bool(np.any(x != np.round(x))):
        raise ValueError(
            f"{what}: found pixel values within 0..1 (max {top:.3g}, fractional); expected "
            "raw 0..255 pixels, which every model keras-prune-guard writes takes: multiply "
            "them by 255 (a network trained on pixels / 255 loads with input_scale='unit', "
            "CLI --input-scale unit)"
        )


def check_model_on(model, data, what: str, source: str | None = None) -> None:
    """Refuses data on which the model's figures would be meaningless, before a long pass.

    The one pixel-range check: `repair`, `sweep`/`prune`, `evaluate`, `predict_classes`
    (`eval --images`), the saliency figure and `export_goodnet` call it before feeding
    images to a model. On the first images of `data` it checks that the model's outputs
    are finite (NaN outputs would all be scored as class 0, the lab's attack target) and
    that the pixels are in the range the model expects: with labels, when the model
    scores at least 25 points more (and at least 50%) on the same images scaled by 255
    (or by 1/255), the images are in the wrong range; without labels, images whose
    pixels all lie within 0..1 are refused (`check_unit_pixels`).

    Args:
        model: a Keras or served model.
        data: `(x, y)` arrays, images `x` alone, or a `tf.data.Dataset` of `(x, y)` or
            `x` batches (other iterables are not read, since they may be one-shot).
        what: how to name the data (an argument or a file).
        source: how to name the model (its file). Defaults to the model's name.

    Raises:
        ValueError: non-finite outputs, or images in the wrong pixel range, with the fix.

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> x = np.random.default_rng(0).uniform(0, 255, (2, 55, 47, 3))
    >>> check_model_on(deepid(), x / 255, "valid")  # unlabelled images scaled by 1/255
    Traceback (most recent call last):
        ...
    ValueError: valid: found pixel values within 0..1 (max 1, fractional); expected raw ...
    """
    first = _first_batch(data, SANITY_IMAGES)
    if first is None or not len(first[0]):
        return
    x, y = first
    check_images(model, x, what)
    name = source or f"model '{getattr(model, 'name', '?')}'"
    classes, finite = _classes(model, x)
    if not finite:
        raise ValueError(
            f"{name}: found NaN or infinite outputs on the first {len(x)} images of {what}; "
            "expected finite class scores (are the weights corrupt?)"
        )
    if y is None:
        check_unit_pixels(x, what)
        return
    accuracy = float(np.mean(classes == y) * 100)
    if accuracy > 75:  # no other scale can score 25 points more
        return
    unit = float(x.max()) <= 1.0
    scaled, _ = _classes(model, x * 255.0 if unit else x / 255.0)
    better = float(np.mean(scaled == y) * 100)
    if better >= 50 and better >= accuracy + 25:
        found = (f"pixel values within 0..1 (max {x.max():.3g})" if unit
                 else f"raw pixel values (max {x.max():.3g})")
        fix = "multiply them by 255" if unit else "divide them by 255"
        raise ValueError(
            f"{what}: found {found}, on which {name} scores {accuracy:.2f}% against "
            f"{better:.2f}% on the same images {'x 255' if unit else '/ 255'}; expected the "
            f"pixel range the model was trained on: {fix} (a network trained on pixels / 255 "
            "loads with input_scale='unit', CLI --input-scale unit)"
        )


__all__ = ["check_images", "check_labels", "check_model_on", "check_unit_pixels",
           "first_images", "input_shape_of", "is_streamed", "labelled_pairs"]
