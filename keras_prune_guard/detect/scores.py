"""Detection scores from what a GoodNet holds: B's and B'''s class probabilities.

Each score is computed with `keras.ops` only (max, equality, select, sums, log), so the
same function runs on NumPy arrays, inside `GoodNetModel.call` and in every export
(SavedModel, ONNX, LiteRT). Higher means more suspicious; a GoodNet with a threshold
flags an input (class N) when its score is above the threshold.

- `confidence_drop` (the default): B's confidence in its own class minus B'''s
  probability of that class, in [-1, 1]. A trigger makes B sure of the target; a repaired
  B'' gives the target little, so the drop is near 1. On clean inputs both agree and the
  drop is near 0.
- `kl`: KL(B || B''), in nats: every class counts, not only B's.
- `disagreement`: 1 where the two classes differ, else 0: 0.2's yes/no rule as a score.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from keras_prune_guard.config import DETECTION_SCORES

#: Added to probabilities before a logarithm.
EPSILON = 1e-7


def first_argmax(x):
    """`ops.argmax(x, axis=-1)` written with ops every export target runs natively.

    Keras's TensorFlow `ops.argmax` tells -0.0 from +0.0 with `Bitcast` and
    `BitwiseAnd`, which neither ONNX nor LiteRT's built-in ops have. This gives
    the same index from max, equality, select and min (ONNX `ReduceMax`, `Equal`,
    `Where`, `ReduceMin`; their TFLite built-ins): the largest value's index,
    the first one on ties, -0.0 ranked just below +0.0 as Keras ranks it. Rows
    holding NaN are not ranked (images are checked finite before any call).

    Args:
        x: a float tensor (..., N).

    Returns:
        An int32 tensor (...,) of indices in [0, N).

    Example:

    >>> np.asarray(first_argmax(np.array([[0.2, 0.5, 0.5], [-0.0, 0.0, -1.0]], "float32")))
    array([1, 1], dtype=int32)
    """
    x = ops.cast(x, keras.backend.result_type(x.dtype, "float32"))
    tiny = float(np.finfo(keras.backend.standardize_dtype(x.dtype)).tiny)
    negative_zero = ops.logical_and(ops.equal(x, 0.0), ops.less(ops.divide(1.0, x), 0.0))
    x = ops.where(negative_zero, -tiny, x)
    is_top = ops.equal(x, ops.max(x, axis=-1, keepdims=True))
    count = _classes(x)
    return ops.min(ops.where(is_top, ops.arange(count, dtype="int32"), count), axis=-1)


def _classes(x):
    return x.shape[-1] if x.shape[-1] is not None else ops.shape(x)[-1]


def _as_float(x):
    x = ops.convert_to_tensor(x)
    return ops.cast(x, keras.backend.result_type(x.dtype, "float32"))


def confidence_drop(bad, repaired):
    """B's probability of its own class minus B'''s probability of that class.

    Args:
        bad: B's class probabilities (..., N).
        repaired: B'''s class probabilities (..., N).

    Returns:
        A float tensor (...,) in [-1, 1].

    Example:

    >>> b = np.array([[0.9, 0.1], [0.6, 0.4]], "float32")
    >>> r = np.array([[0.2, 0.8], [0.5, 0.5]], "float32")
    >>> np.round(np.asarray(confidence_drop(b, r)), 3)
    array([0.7, 0.1], dtype=float32)
    """
    bad, repaired = _as_float(bad), _as_float(repaired)
    classes = ops.arange(_classes(bad), dtype="int32")
    own = ops.equal(classes, ops.expand_dims(first_argmax(bad), -1))
    zero = ops.zeros_like(repaired)
    return ops.max(bad, axis=-1) - ops.sum(ops.where(own, repaired, zero), axis=-1)


def kl(bad, repaired):
    """KL(B || B''): sum over classes of p_B * (log p_B - log p_B''), in nats.

    Args:
        bad: B's class probabilities (..., N).
        repaired: B'''s class probabilities (..., N).

    Returns:
        A float tensor (...,), >= 0 up to rounding.

    Example:

    >>> b = np.array([[0.5, 0.5]], "float32")
    >>> float(np.asarray(kl(b, b))[0])
    0.0
    """
    bad, repaired = _as_float(bad), _as_float(repaired)
    return ops.sum(bad * (ops.log(bad + EPSILON) - ops.log(repaired + EPSILON)), axis=-1)


def disagreement(bad, repaired):
    """1.0 where B's and B'''s classes differ, else 0.0 (0.2's GoodNet rule).

    Args:
        bad: B's class probabilities (..., N).
        repaired: B'''s class probabilities (..., N).

    Returns:
        A float tensor (...,) of 0.0 and 1.0.

    Example:

    >>> b = np.array([[0.9, 0.1], [0.6, 0.4]], "float32")
    >>> np.asarray(disagreement(b, b[:, ::-1]))
    array([1., 1.], dtype=float32)
    """
    bad, repaired = _as_float(bad), _as_float(repaired)
    differ = ops.not_equal(first_argmax(bad), first_argmax(repaired))
    return ops.cast(differ, bad.dtype)


#: Every GoodNet score by name (`GoodNetModel(score=...)`, `repair --score`).
SCORES: dict[str, Callable] = {
    "confidence_drop": confidence_drop,
    "kl": kl,
    "disagreement": disagreement,
}
assert tuple(SCORES) == DETECTION_SCORES, "config.DETECTION_SCORES names these functions"
#: The score a GoodNet uses unless told otherwise (docs/detection.md says why).
DEFAULT_SCORE = DETECTION_SCORES[0]


def check_score(name: str) -> str:
    """Checks that `name` is a known score; returns it.

    Example:

    >>> check_score("kl")
    'kl'
    """
    if name not in SCORES:
        raise ValueError(f"score must be one of {sorted(SCORES)}. Received: score={name!r}")
    return name


def score_arrays(name: str, bad: np.ndarray, repaired: np.ndarray) -> np.ndarray:
    """The score `name` of NumPy probabilities, as float64 (N,).

    Example:

    >>> score_arrays("disagreement", np.eye(2), np.eye(2)[::-1]).tolist()
    [1.0, 1.0]
    """
    values = SCORES[check_score(name)](np.asarray(bad, "float32"), np.asarray(repaired, "float32"))
    return np.asarray(ops.convert_to_numpy(values), dtype="float64")


__all__ = ["DEFAULT_SCORE", "SCORES", "check_score", "confidence_drop", "disagreement",
           "first_argmax", "kl", "score_arrays"]
