"""Channel ranking: mean activation of each masked channel over a whole dataset."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

#: Orders `rank_channels` accepts.
ORDERS = ("ascending", "descending")


def batches(data, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yields `(x, y)` batches from arrays, `(x, y)` pairs or an iterable of batches.

    Args:
        data: an array `x`, a tuple `(x, y)` of arrays, a `tf.data.Dataset`
            or any iterable yielding `x` or `(x, y)` batches.
        batch_size: batch size used to cut arrays. Defaults to 1024.

    Yields:
        `(x, y)` with `x` float32 channels-last and `y` an int64 vector or None.
    """
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple):
        x, y = data
        if hasattr(x, "shape") and not isinstance(x, tf.data.Dataset):
            for start in range(0, len(x), batch_size):
                yield (
                    np.asarray(x[start : start + batch_size], dtype="float32"),
                    None if y is None else np.asarray(y[start : start + batch_size], "int64"),
                )
            return
    if isinstance(data, np.ndarray):
        for start in range(0, len(data), batch_size):
            yield np.asarray(data[start : start + batch_size], dtype="float32"), None
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            x, y = item[0], item[1] if len(item) > 1 else None
        else:
            x, y = item, None
        x = np.asarray(x, dtype="float32")
        yield x, None if y is None else np.asarray(y, dtype="int64").reshape(-1)


_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_forward(model: keras.Model):
    """Returns a `tf.function` running `model` in inference mode on any batch size.

    One function is traced per model and reused (kept while the model lives).
    """
    forward = _FORWARDS.get(model)
    if forward is None:
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        _FORWARDS[model] = forward
    return forward


def collect_activations(
    head: keras.Model, data, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs `head` over `data` in batches and keeps its outputs.

    Args:
        head: the part of the network before the mask (see `split_at_mask`).
        data: see `batches`.
        batch_size: batch size for arrays. Defaults to 1024.

    Returns:
        `(activations, labels)`: float32 (N, ..., C) and int64 (N,) or None.
    """
    forward = compiled_forward(head)
    acts, labels = [], []
    for x, y in batches(data, batch_size):
        acts.append(forward(x).numpy())
        labels.append(y)
    if not acts:
        raise ValueError("The validation data is empty: expected at least one image.")
    y_all = None if any(y is None for y in labels) else np.concatenate(labels)
    return np.concatenate(acts), y_all


def activation_means(activations: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Mean of each channel (last axis) over images and positions, in float64.

    Accepts one array or an iterable of batches, so a large set never has to be
    in memory at once.
    """
    if isinstance(activations, np.ndarray):
        activations = [activations]
    total, count = None, 0
    for batch in activations:
        flat = np.asarray(batch, dtype="float64").reshape(-1, batch.shape[-1])
        total = flat.sum(axis=0) if total is None else total + flat.sum(axis=0)
        count += flat.shape[0]
    if not count:
        raise ValueError("No activations to average: the validation data is empty.")
    return total / count


def rank_channels(means: np.ndarray, order: str = "ascending") -> np.ndarray:
    """Returns channel indices in pruning order.

    Args:
        means: mean activation per channel.
        order: "ascending" (least active first: the Fine-Pruning paper and the
            public lab solutions) or "descending" (the lab handout's literal
            words). Ties break by channel index in both orders. Defaults to
            "ascending".

    Returns:
        An int64 array, a permutation of `range(len(means))`.

    Example:

    >>> rank_channels(np.array([0.5, 0.0, 0.0, 2.0])).tolist()
    [1, 2, 0, 3]
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}. Received: order={order!r}")
    means = np.asarray(means, dtype="float64")
    key = means if order == "ascending" else -means
    return np.argsort(key, kind="stable").astype("int64")


def channel_ranking(
    head: keras.Model, data, order: str = "ascending", batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks the channels entering a mask by mean activation over `data`.

    Streams `data` through `head` in batches and keeps only running sums.

    Args:
        head: the part of the network before the mask (see `split_at_mask`).
        data: images, `(x, y)`, a `tf.data.Dataset` or an iterable of batches.
        order: see `rank_channels`. Defaults to "ascending".
        batch_size: batch size for arrays. Defaults to 1024.

    Returns:
        `(order, means)`: channel indices in pruning order, float64 means.

    Example:

    >>> head, _ = split_at_mask(insert_channel_mask(model))
    >>> ranking, means = channel_ranking(head, x_valid)
    """
    forward = compiled_forward(head)
    means = activation_means(forward(x).numpy() for x, _ in batches(data, batch_size))
    return rank_channels(means, order), means
