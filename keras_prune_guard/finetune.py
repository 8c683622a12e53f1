"""Fine-pruning: train a pruned network B' on clean data, its mask frozen, giving B''."""

from __future__ import annotations

import keras
import numpy as np

from keras_prune_guard.surgery import find_channel_mask, pruned_copy

DEFAULT_LEARNING_RATE = 1e-4
"""Initial Adam learning rate of `fine_tune` (cosine-decayed to 0 over the run).

Small, so that fine-tuning never wrecks a trained network, even on a few hundred images.
Measured with `keras-prune-guard demo` (built-in benchmark, 1,800 clean validation faces,
X = 2, 4, 10): 5 epochs at 1e-4 bring the pruned networks' clean test accuracy from 84-93%
back to 97-98% but leave the backdoor (attack success 93-99%); 8 epochs at 1e-2 erase it
(attack success 0.00%, clean accuracy 92.8-93.9%, the original's 96.5%). On the lab3 network
with only its 120 real clean faces, 5 epochs at 1e-2 destroy it (accuracy 10-60% on the very faces
it was tuned on) while 1e-4..3e-3 keep it. Choose the rate for your data
(`repair --fine-tune-lr`)."""
DEFAULT_BATCH_SIZE = 32
"""Images per training step of `fine_tune`."""

Data = tuple[np.ndarray, np.ndarray]


def check_data(model: keras.Model, data, what: str) -> Data:
    """Returns `data` as (float32 images, int64 labels), checked against `model`.

    Args:
        model: the network the data is for (its input shape and classes).
        data: a pair `(x, y)`.
        what: how to name the data in error messages (an argument or a file).

    Returns:
        `(x, y)` as float32 and int64 arrays.

    Raises:
        ValueError: not a pair, images of the wrong shape, a label count that
            differs from the image count, or labels outside the model's classes.

    Example:

    >>> x, y = check_data(b_prime, (x_valid, y_valid), "valid.h5")
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what} must be a pair (x, y) of arrays. Received: {type(data)}")
    x, y = np.asarray(data[0], dtype="float32"), np.asarray(data[1]).reshape(-1)
    expected = tuple(model.input_shape[1:])
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{what}: images of shape {x.shape} do not fit model '{model.name}', which "
            f"expects (N, {', '.join(str(d) for d in expected)})."
        )
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{what}: expected as many labels as images (at least one). Received "
            f"{len(x)} images and {len(y)} labels."
        )
    classes = int(model.output_shape[-1])
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
        raise ValueError(
            f"{what}: labels must be integers in [0, {classes - 1}] for model "
            f"'{model.name}'. Received dtype {y.dtype}, range [{y.min()}, {y.max()}]."
        )
    return x, y.astype("int64")


def fine_tune(
    b_prime: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    validation: Data | None = None,
    verbose: int = 0,
) -> keras.Model:
    """Fine-tunes an independent copy of the pruned network B' on clean data: B''.

    The copy keeps B''s `ChannelMask`; the mask is a non-trainable weight, so the
    pruned channels stay exactly zero through training while every other weight
    may change. B' itself is never modified. The optimizer is Adam whose
    learning rate decays from `learning_rate` to 0 along a cosine over all the
    steps (so a large rate ends on a settled network rather than mid-jump), the
    loss sparse categorical cross-entropy. Training is seeded
    (`keras.utils.set_random_seed(seed)`, which also seeds Python and NumPy).

    Args:
        b_prime: the pruned network B', a functional model holding one `ChannelMask`.
        x: clean training images (N, H, W, C) in the model's pixel range (raw
            0..255 for every model this package builds).
        y: their integer labels (N,).
        epochs: training epochs (>= 1).
        learning_rate: initial Adam learning rate (cosine-decayed to 0).
            Defaults to `DEFAULT_LEARNING_RATE` (1e-4; see its notes).
        batch_size: images per step. Defaults to `DEFAULT_BATCH_SIZE` (32).
        seed: random seed of the shuffling and dropout. Defaults to 0.
        validation: optional clean `(x, y)` monitored by `fit` (reported in
            `model.history`). Defaults to `None`.
        verbose: `fit`'s verbosity. Defaults to 0.

    Returns:
        B'': a new compiled functional model named `<B' name>_ft`, with the same
        pruned channels as B'; `b_second.history.history` holds the loss and
        accuracy of every epoch.

    Raises:
        ValueError: `b_prime` has no (or several) `ChannelMask`, `epochs` is not a
            positive integer, or the data do not fit the model.

    Example:

    >>> b_prime = prune(bad_model, x_valid, y_valid).snapshots[4.0]
    >>> b_second = fine_tune(b_prime, x_valid, y_valid, epochs=5)
    >>> pruned = find_channel_mask(b_prime).pruned_channels()
    >>> find_channel_mask(b_second).pruned_channels() == pruned
    True
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer. Received: epochs={epochs!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0. Received: learning_rate={learning_rate!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
        batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
    pruned = find_channel_mask(b_prime).pruned_channels()
    x, y = check_data(b_prime, (x, y), "fine-tuning data")
    if validation is not None:
        validation = check_data(b_prime, validation, "validation")

    keras.utils.set_random_seed(int(seed))
    b_second = pruned_copy(b_prime, pruned, name=f"{b_prime.name}_ft")
    steps = int(epochs) * -(-len(x) // int(batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(float(learning_rate), steps)
    b_second.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    b_second.fit(
        x,
        y,
        epochs=int(epochs),
        batch_size=int(batch_size),
        shuffle=True,
        validation_data=validation,
        verbose=verbose,
    )
    return b_second


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_LEARNING_RATE", "check_data", "fine_tune"]
