"""STRIP (Gao et al. 2019): a triggered input keeps its class when blended with clean images.

Each input is blended with `blends` held-out clean images, `alpha * x + (1 - alpha) * clean`
(pixels stay in the model's range), the possibly backdoored classifier B runs on the
blends, and the Shannon entropy (natural log) of each blend's class probabilities is
averaged. A trigger survives the blending and keeps B on its target: the entropy is low.
The score is minus the mean entropy, so higher means more suspicious, like every detector
score in this package; the threshold is set on held-out clean inputs at a false-alarm
budget (`calibrate.threshold_for`).

The clean images each input is blended with are drawn without replacement by a generator
seeded with `config.seed` and a hash of the input's pixels: the same image gets the same
blends, and so the same score, wherever it sits in a batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import keras
import numpy as np

from keras_prune_guard.data.checks import check_images
from keras_prune_guard.data.distribute import compiled_forward
from keras_prune_guard.detect.calibrate import check_false_alarm, threshold_for

#: The most clean images an input may be blended with.
MAX_BLENDS = 1024
#: How far B's rows may sum from 1 and still be read as class probabilities.
PROBABILITY_TOLERANCE = 1e-2


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class StripConfig:
    """How STRIP blends and where it sets its threshold.

    Attributes:
        blends: N, the clean images each input is blended with, in [1, 1024]. Defaults
            to 64.
        alpha: the input's weight in a blend, in (0, 1). Defaults to 0.5.
        false_alarm: the clean false-alarm budget of `calibrate`, in (0, 0.5]. Defaults
            to 0.01 (the paper's 1%).
        seed: seeds the choice of blend images, an integer >= 0. Defaults to 0.
        batch_size: blends per forward pass (at least one input's `blends`), >= 1.
            Defaults to 1024.

    Example:

    >>> StripConfig(blends=16).alpha
    0.5
    """

    blends: int = 64
    alpha: float = 0.5
    false_alarm: float = 0.01
    seed: int = 0
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if not _is_int(self.blends) or not 1 <= self.blends <= MAX_BLENDS:
            raise ValueError(f"StripConfig.blends must be an integer in [1, {MAX_BLENDS}]. "
                             f"Received: blends={self.blends!r}")
        if not _is_number(self.alpha) or not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"StripConfig.alpha must be a number in (0, 1) (the input's "
                             f"weight in a blend). Received: alpha={self.alpha!r}")
        try:
            check_false_alarm(self.false_alarm)
        except ValueError as error:
            raise ValueError(f"StripConfig.{error}") from None
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"StripConfig.seed must be an integer >= 0. Received: "
                             f"seed={self.seed!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"StripConfig.batch_size must be an integer >= 1. Received: "
                             f"batch_size={self.batch_size!r}")


def blend_indices(image: np.ndarray, pool_size: int, blends: int, seed: int) -> np.ndarray:
    """The pool rows `image` is blended with: `blends` distinct rows, fixed by its pixels.

    Args:
        image: one (H, W, C) image.
        pool_size: the number of clean images to draw from (>= `blends`).
        blends: how many to draw.
        seed: the configuration's seed.

    Returns:
        An int64 array (blends,) of distinct indices in [0, pool_size).

    Example:

    >>> a = blend_indices(np.zeros((2, 2, 1), "float32"), 10, 4, seed=0)
    >>> len(set(a.tolist())), bool((a == blend_indices(np.zeros((2, 2, 1)), 10, 4, 0)).all())
    (4, True)
    """
    pixels = np.ascontiguousarray(image, dtype="float32")
    digest = hashlib.blake2b(pixels.tobytes(), digest_size=16).digest()
    words = np.frombuffer(digest, dtype="<u8").tolist()
    rng = np.random.default_rng([seed, *words])
    return rng.choice(pool_size, blends, replace=False).astype("int64")


def mean_entropy(probabilities: np.ndarray, blends: int) -> np.ndarray:
    """The Shannon entropy (nats) of each row, averaged over each input's `blends` rows.

    Args:
        probabilities: (M * blends, K) class probabilities, an input's blends adjacent.
        blends: rows per input.

    Returns:
        A float64 array (M,).

    Example:

    >>> p = np.array([[1.0, 0.0], [0.5, 0.5]])
    >>> mean_entropy(p, 2).round(4)
    array([0.3466])
    """
    p = np.asarray(probabilities, dtype="float64")
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return (-plogp.sum(axis=-1)).reshape(-1, blends).mean(axis=1)


def _check_probabilities(p: np.ndarray, model: keras.Model) -> None:
    """Raises ValueError unless `p` is (rows, K) class probabilities (a softmax output)."""
    name = getattr(model, "name", "?")
    if p.ndim != 2:
        raise ValueError(f"model '{name}' outputs shape {p.shape}; STRIP expects class "
                         "probabilities of shape (N, K)")
    sums = p.sum(axis=-1)
    if p.min() < -PROBABILITY_TOLERANCE or np.abs(sums - 1.0).max() > PROBABILITY_TOLERANCE:
        raise ValueError(
            f"model '{name}' outputs values in [{p.min():.4g}, {p.max():.4g}] with row sums in "
            f"[{sums.min():.4g}, {sums.max():.4g}]; STRIP expects class probabilities (rows "
            "summing to 1): end the model with a softmax"
        )


class StripDetector:
    """STRIP on a classifier B: a score per input, a threshold from clean inputs.

    Args:
        model: B, a Keras classifier whose output is class probabilities (softmax),
            on the pixel range of `pool`.
        pool: held-out clean (N_pool, H, W, C) images to blend with, at least
            `config.blends` of them, B's image shape, finite.
        config: a `StripConfig`. Defaults to `StripConfig()`.

    Attributes:
        threshold: set by `calibrate`; None before.
        calibration_images: how many clean images `calibrate` used; None before.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(3, activation="softmax")])
    >>> pool = np.random.default_rng(0).uniform(0, 255, (20, 4, 4, 1)).astype("float32")
    >>> strip = StripDetector(model, pool, StripConfig(blends=8, false_alarm=0.1))
    >>> strip.calibrate(pool[:10]).flags(pool[10:]).shape
    (10,)
    """

    def __init__(self, model: keras.Model, pool: np.ndarray,
                 config: StripConfig | None = None) -> None:
        config = StripConfig() if config is None else config
        if not isinstance(config, StripConfig):
            raise ValueError(f"config must be a StripConfig or None. Received: config of type "
                             f"{type(config).__name__}")
        check_images(model, pool, "pool")
        pool = np.asarray(pool, dtype="float32")
        if len(pool) < config.blends:
            raise ValueError(f"pool holds {len(pool)} clean images; expected at least "
                             f"config.blends={config.blends} (each input is blended with that "
                             "many distinct ones)")
        self.model = model
        self.pool = pool
        self.config = config
        self.threshold: float | None = None
        self.calibration_images: int | None = None
        self._forward = compiled_forward(model)

    @property
    def inputs_per_pass(self) -> int:
        """How many inputs' blends go through B in one forward pass."""
        return max(1, self.config.batch_size // self.config.blends)

    def _blends(self, x: np.ndarray) -> np.ndarray:
        """The (len(x) * blends, H, W, C) blends of a few inputs, each input's adjacent."""
        cfg = self.config
        rows = np.stack([blend_indices(image, len(self.pool), cfg.blends, cfg.seed)
                         for image in x])
        mixed = cfg.alpha * x[:, None] + (1.0 - cfg.alpha) * self.pool[rows]
        return mixed.astype("float32").reshape(-1, *x.shape[1:])

    def scores(self, x: np.ndarray) -> np.ndarray:
        """STRIP's score of every image: minus the mean entropy of B on its blends.

        Args:
            x: (M, H, W, C) images in B's pixel range.

        Returns:
            A float64 array (M,) (higher = more suspicious), the same for the same
            image wherever it sits in `x`.

        Example:

        >>> import keras, numpy as np
        >>> net = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
        ...                         keras.layers.Dense(2, activation="softmax")])
        >>> pool = np.arange(32, dtype="float32").reshape(8, 2, 2, 1)
        >>> StripDetector(net, pool, StripConfig(blends=4)).scores(pool[:3]).shape
        (3,)
        """
        check_images(self.model, x, "x")
        x = np.asarray(x, dtype="float32")
        out = np.empty(len(x), dtype="float64")
        step = self.inputs_per_pass
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            p = np.asarray(self._forward(self._blends(chunk)))
            _check_probabilities(p, self.model)
            out[start:start + len(chunk)] = -mean_entropy(p, self.config.blends)
        return out

    def calibrate(self, clean: np.ndarray) -> StripDetector:
        """Sets `threshold` so at most `config.false_alarm` of `clean` score above it.

        Args:
            clean: held-out clean (M, H, W, C) images, at least one, not from `pool`
                (an image blended with itself keeps its class).

        Returns:
            This detector, calibrated.

        Example:

        >>> import keras, numpy as np
        >>> net = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
        ...                         keras.layers.Dense(2, activation="softmax")])
        >>> pool = np.arange(32, dtype="float32").reshape(8, 2, 2, 1)
        >>> strip = StripDetector(net, pool, StripConfig(blends=4, false_alarm=0.5))
        >>> strip.calibrate(pool[4:]).calibration_images
        4
        """
        scores = self.scores(clean)
        self.threshold = threshold_for(scores, self.config.false_alarm)
        self.calibration_images = len(scores)
        return self

    def flags(self, x: np.ndarray) -> np.ndarray:
        """True for each image whose score is above `threshold` (suspected triggered).

        Args:
            x: (M, H, W, C) images in B's pixel range.

        Returns:
            A bool array (M,).

        Raises:
            ValueError: when the detector has no threshold yet.

        Example:

        >>> import keras, numpy as np
        >>> net = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
        ...                         keras.layers.Dense(2, activation="softmax")])
        >>> pool = np.arange(32, dtype="float32").reshape(8, 2, 2, 1)
        >>> strip = StripDetector(net, pool, StripConfig(blends=4, false_alarm=0.5))
        >>> strip.calibrate(pool[4:]).flags(pool[:2]).dtype
        dtype('bool')
        """
        if self.threshold is None:
            raise ValueError("StripDetector.flags: threshold is None: call calibrate(clean) "
                             "first")
        return self.scores(x) > self.threshold


__all__ = ["MAX_BLENDS", "StripConfig", "StripDetector", "blend_indices", "mean_entropy"]
