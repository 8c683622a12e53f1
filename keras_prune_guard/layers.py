"""`ChannelMask`: a fixed per-channel 0/1 multiplier, the unit of pruning."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_prune_guard")
class ChannelMask(keras.layers.Layer):
    """Multiplies each channel of a channels-last input by a fixed 0/1 weight.

    The mask is a non-trainable weight created in `build` and initialised to
    ones, so a fresh `ChannelMask` is the identity. Pruning channel `c` sets its
    weight to 0, which zeroes that channel for every position of every image.
    Because the mask is a weight, compiled graphs and exported SavedModels see
    values set with `prune`/`set_pruned` without retracing.

    This layer has nothing to do with Keras's timestep masking
    (`keras.layers.Masking`, `compute_mask`): it neither produces nor consumes
    a Keras mask, and passes any incoming Keras mask through unchanged.

    Args:
        pruned_channels: channel indices that start pruned once the layer is
            built. Defaults to `None` (nothing pruned).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> import numpy as np
    >>> mask = ChannelMask(name="pool_3_mask")
    >>> y = mask(np.ones((1, 2, 2, 4), "float32"))
    >>> mask.prune([1, 3])
    >>> mask.pruned_channels()
    [1, 3]
    """

    def __init__(self, pruned_channels: Iterable[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self._probe: Callable | None = None  # see `probing`
        self._initial_pruned = sorted({int(c) for c in (pruned_channels or [])})
        negative = [c for c in self._initial_pruned if c < 0]
        if negative:
            raise ValueError(
                f"ChannelMask pruned_channels must be channel indices >= 0. "
                f"Received: pruned_channels={list(pruned_channels)}"
            )

    def build(self, input_shape):
        channels = input_shape[-1] if len(input_shape) else None
        if channels is None:
            raise ValueError(
                f"ChannelMask '{self.name}' needs a known channel axis (the last "
                f"one). Received: input_shape={tuple(input_shape)}"
            )
        channels = int(channels)
        too_large = [c for c in self._initial_pruned if c >= channels]
        if too_large:
            raise ValueError(
                f"ChannelMask '{self.name}' has channels 0..{channels - 1}. "
                f"Received out-of-range pruned_channels: {too_large}"
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=1, axes={-1: channels})
        self.mask = self.add_weight(
            name="mask",
            shape=(channels,),
            initializer="ones",
            trainable=False,
        )
        if self._initial_pruned:
            values = np.ones((channels,), dtype="float32")
            values[self._initial_pruned] = 0.0
            self.mask.assign(values)

    def call(self, inputs):
        if self._probe is not None:  # only inside `probing`, on eager calls
            self._probe(inputs)
        return inputs * keras.ops.cast(self.mask, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    @property
    def channels(self) -> int:
        """Number of channels the mask covers (the layer must be built)."""
        self._require_built()
        return int(self.mask.shape[0])

    def mask_values(self) -> np.ndarray:
        """Returns the mask as a float32 numpy vector of 0s and 1s."""
        self._require_built()
        return np.asarray(keras.ops.convert_to_numpy(self.mask), dtype="float32")

    def pruned_channels(self) -> list[int]:
        """Returns the sorted indices of the channels whose mask is 0."""
        if not self.built:
            return list(self._initial_pruned)
        return [int(c) for c in np.flatnonzero(self.mask_values() == 0)]

    def set_pruned(self, channels: Iterable[int]) -> None:
        """Sets exactly `channels` to pruned and every other channel to kept."""
        self._require_built()
        channels = self._checked(channels)
        values = np.ones((self.channels,), dtype="float32")
        values[channels] = 0.0
        self.mask.assign(values)

    def prune(self, channels: Iterable[int]) -> None:
        """Prunes `channels` in addition to those already pruned."""
        self._require_built()
        values = self.mask_values()
        values[self._checked(channels)] = 0.0
        self.mask.assign(values)

    def restore(self) -> None:
        """Un-prunes every channel (mask back to all ones)."""
        self.set_pruned([])

    def get_config(self):
        return {**super().get_config(), "pruned_channels": self.pruned_channels()}

    @contextlib.contextmanager
    def probing(self, observe: Callable[[np.ndarray], None]) -> Iterator[None]:
        """Hands every input this mask receives to `observe` (as numpy) while open.

        For models whose layer graph cannot be cut at the mask (a subclassed
        model applying it in its own `call`): the whole-model sweep reads the
        activations entering the mask this way. Only eager calls can be
        observed (call the model directly, not `predict` or a `tf.function`).

        Example:

        >>> import numpy as np
        >>> mask, seen = ChannelMask(), []
        >>> with mask.probing(seen.append):
        ...     y = mask(np.ones((2, 3, 3, 4), "float32"))  # e.g. model(images)
        >>> seen[0].shape
        (2, 3, 3, 4)
        """

        def probe(inputs):
            if not tf.executing_eagerly():
                raise RuntimeError(
                    f"ChannelMask '{self.name}' is probed inside a compiled function; "
                    "call the model eagerly (model(x), not predict) while probing."
                )
            observe(keras.ops.convert_to_numpy(inputs))

        self._probe = probe
        try:
            yield
        finally:
            self._probe = None

    def _checked(self, channels: Iterable[int]) -> list[int]:
        channels = [int(c) for c in channels]
        bad = [c for c in channels if not 0 <= c < self.channels]
        if bad:
            raise ValueError(
                f"ChannelMask '{self.name}' has channels 0..{self.channels - 1}. "
                f"Received out-of-range channels: {bad}"
            )
        return channels

    def _require_built(self):
        if not self.built:
            raise ValueError(
                f"ChannelMask '{self.name}' is not built yet: call it on an input "
                "(or build the model holding it) before reading or setting the mask."
            )
