"""Channel ranking: mean activation of each masked channel over a whole dataset."""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.config import ORDERS
from keras_prune_guard.data.distribute import batches, compiled_forward
from keras_prune_guard.pruning.activations import collect

#: Means closer than this share of the largest |mean| are ties (broken by channel index).
TIE_TOLERANCE = 1e-6


def collect_activations(
    head: keras.Model,
    data,
    batch_size: int = 1024,
    *,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs `head` over `data` in batches and keeps its outputs.

    Args:
        head: the part of the network before the mask (see `split_at_mask`).
        data: see `batches`; a `tf.data.Dataset` is read batch by batch.
        batch_size: batch size for arrays. Defaults to 1024.
        strategy: run the pass under this `tf.distribute` strategy; every
            image's activations still land at its own row. Defaults to `None`.

    Returns:
        `(activations, labels)`: float32 (N, ..., C) and int64 (N,) or None.
        (For a cache in a file instead of RAM, see `activations.collect`.)

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard.model.loading import deepid
    >>> from keras_prune_guard.model.surgery import insert_channel_mask, split_at_mask
    >>> head, tail = split_at_mask(insert_channel_mask(deepid()))  # head: input to pool_3
    >>> x = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)).astype("float32")
    >>> acts, labels = collect_activations(head, (x, np.arange(8)), batch_size=4)
    >>> acts.shape, labels.tolist()
    ((8, 5, 4, 60), [0, 1, 2, 3, 4, 5, 6, 7])
    """

    with collect(head, data, batch_size=batch_size, strategy=strategy) as acts:
        return acts.values, acts.labels


def activation_means(activations: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Mean of each channel (last axis) over images and positions, in float64.

    Accepts one array or an iterable of batches, so a large set never has to be
    in memory at once. Sums run in float64 batch by batch, without a float64
    copy of the activations.

    Example:

    >>> import numpy as np
    >>> activation_means(np.ones((2, 3, 4), "float32")).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    if isinstance(activations, np.ndarray):
        activations = [activations]
    total, count = None, 0
    for batch in activations:
        flat = np.asarray(batch).reshape(-1, batch.shape[-1])
        sums = flat.sum(axis=0, dtype="float64")
        total = sums if total is None else total + sums
        count += flat.shape[0]
    if not count:
        raise ValueError("No activations to average: the validation data is empty.")
    return total / count


def rank_channels(
    means: np.ndarray, order: str = "ascending", tie_tolerance: float = TIE_TOLERANCE
) -> np.ndarray:
    """Returns channel indices in pruning order.

    Means that differ by at most `tie_tolerance` times the largest |mean| from
    the first mean of their run (in sorted order) are ties, and ties go by
    channel index. So sums reordered across devices, which change a mean in
    its last bits, do not change the order.

    Args:
        means: mean activation per channel.
        order: "ascending" (least active first: the Fine-Pruning paper and the
            public lab solutions) or "descending" (the lab handout's literal
            words). Ties break by channel index in both orders. Defaults to
            "ascending".
        tie_tolerance: relative closeness that makes two means a tie (0: only
            equal means). Defaults to `TIE_TOLERANCE` (1e-6).

    Returns:
        An int64 array, a permutation of `range(len(means))`.

    Example:

    >>> import numpy as np
    >>> rank_channels(np.array([0.5, 0.0, 0.0, 2.0])).tolist()
    [1, 2, 0, 3]
    >>> rank_channels(np.array([1.0 + 1e-12, 1.0, 0.5])).tolist()
    [2, 0, 1]
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}. Received: order={order!r}")
    if not tie_tolerance >= 0:
        raise ValueError(f"tie_tolerance must be >= 0. Received: {tie_tolerance!r}")
    means = np.asarray(means, dtype="float64")
    key = means if order == "ascending" else -means
    first = np.argsort(key, kind="stable")
    if not len(means):
        return first.astype("int64")
    tol = tie_tolerance * float(np.max(np.abs(means)))
    group = np.empty(len(means), dtype="int64")
    current, anchor = 0, key[first[0]]
    for channel in first:
        if key[channel] - anchor > tol:
            current, anchor = current + 1, key[channel]
        group[channel] = current
    return np.lexsort((np.arange(len(means)), group)).astype("int64")


def channel_ranking(
    head: keras.Model,
    data,
    order: str = "ascending",
    batch_size: int = 1024,
    *,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks the channels entering a mask by mean activation over `data`.

    The same pass the sweep makes (`activations.collect`): `data` streams through
    `head` in batches; the means are its float64 channel sums over images and positions.

    Args:
        head: the part of the network before the mask (see `split_at_mask`).
        data: images, `(x, y)`, a `tf.data.Dataset` (such as
            `data.lab_h5_dataset`) or an iterable of batches.
        order: see `rank_channels`. Defaults to "ascending".
        batch_size: batch size for arrays. Defaults to 1024.
        strategy: run the pass under this `tf.distribute` strategy. Defaults
            to `None`.

    Returns:
        `(order, means)`: channel indices in pruning order, float64 means.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> head = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.ReLU()])  # split_at_mask
    >>> x = np.ones((4, 2, 2, 3)) * np.array([2.0, 0.0, 1.0])  # channel means 2, 0 and 1
    >>> ranking, means = channel_ranking(head, x)
    >>> ranking.tolist(), means.tolist()
    ([1, 2, 0], [2.0, 0.0, 1.0])
    """

    # The sweep's own pass (activations.collect), so the two can never rank differently.
    with collect(head, data, batch_size=batch_size, strategy=strategy) as acts:
        means = acts.means
    return rank_channels(means, order), means


__all__ = [
    "ORDERS",
    "TIE_TOLERANCE",
    "activation_means",
    "batches",
    "channel_ranking",
    "collect_activations",
    "compiled_forward",
    "rank_channels",
]
