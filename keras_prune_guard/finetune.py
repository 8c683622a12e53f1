"""Fine-pruning: train a pruned network B' on clean data, its mask frozen, giving B''."""

from __future__ import annotations

import keras
import numpy as np

from keras_prune_guard.config import (
    AUGMENTATIONS,
    DEFAULT_FINE_TUNE_BATCH_SIZE,
    DEFAULT_LEARNING_RATE,
    FineTuneConfig,
    deprecated,
)
from keras_prune_guard.schedules import build_schedule
from keras_prune_guard.surgery import find_channel_mask, pruned_copy

# The defaults live in config.FineTuneConfig; restated here under their 0.1 names.
DEFAULT_BATCH_SIZE = DEFAULT_FINE_TUNE_BATCH_SIZE
#: Largest random shift of augmented fine-tuning, as a share of the height and width.
SHIFT = 0.06

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
    data,
    config: FineTuneConfig | None = None,
    *legacy,
    validation: Data | None = None,
    verbose: int = 0,
    **options,
) -> keras.Model:
    """Fine-tunes an independent copy of the pruned network B' on clean data: B''.

    The copy keeps B''s `ChannelMask`; the mask is a non-trainable weight, so the
    pruned channels stay exactly zero through training while every other weight
    may change. B' itself is never modified. With `config.learning_rate=None` (the
    default) the schedule is chosen on a held-out part of `data`
    (`choice.choose_fine_tune`, with B''s own held-out accuracy as the reference; `repair`
    uses B's); with a number, Adam's rate decays from it to 0 along a cosine over all
    the steps, on all of `data`. The loss is sparse categorical cross-entropy, the images
    augmented as `config.augment` says. Training is seeded
    (`keras.utils.set_random_seed(config.seed)`, which also seeds Python and NumPy).

    Args:
        b_prime: the pruned network B', a functional model holding one `ChannelMask`.
        data: clean training data `(x, y)`: images (N, H, W, C) in the model's pixel
            range (raw 0..255 for every model this package builds), integer labels.
        config: epochs (>= 1 here), learning rate or schedules, augmentation, batch
            size and seed (`FineTuneConfig`). Defaults to `None` (fields from
            `**options`).
        validation: optional clean `(x, y)` monitored by `fit` (reported in
            `model.history`). Defaults to `None`.
        verbose: `fit`'s verbosity. Defaults to 0.
        **options: `FineTuneConfig` fields one by one (e.g. `epochs=5`).

    Returns:
        B'': a new compiled functional model named `<B' name>_ft`, with the same
        pruned channels as B'; `b_second.history.history` holds the loss and
        accuracy of every epoch.

    Raises:
        ValueError: `b_prime` has no (or several) `ChannelMask`, `epochs` is not a
            positive integer, or the data do not fit the model.

    Example:

    >>> b_prime = prune(bad_model, (x_valid, y_valid)).snapshots[4.0]
    >>> b_second = fine_tune(b_prime, (x_valid, y_valid), FineTuneConfig(epochs=5))
    >>> pruned = find_channel_mask(b_prime).pruned_channels()
    >>> find_channel_mask(b_second).pruned_channels() == pruned
    True
    """
    if config is not None and not isinstance(config, FineTuneConfig):
        deprecated("fine_tune(b_prime, x, y, ...)", "fine_tune(b_prime, (x, y), ...)")
        data, config = (data, config), None
    if legacy:
        raise TypeError("fine_tune() takes (b_prime, data, config) and keyword options; "
                        f"received {len(legacy)} extra positional argument(s)")
    config = (config or FineTuneConfig()).replace(**options) if options else (
        config or FineTuneConfig())
    if config.epochs < 1:
        raise ValueError(f"epochs must be a positive integer. Received: epochs={config.epochs}")
    find_channel_mask(b_prime)
    x, y = check_data(b_prime, data, "fine-tuning data")
    if validation is not None:
        validation = check_data(b_prime, validation, "validation")

    if config.learning_rate is None:
        from keras_prune_guard.choice import choose_fine_tune

        return choose_fine_tune(b_prime, (x, y), config).model
    return train_copy(b_prime, (x, y), config, f"cosine:{config.learning_rate}",
                      validation=validation, verbose=verbose)


def train_copy(b_prime: keras.Model, data: Data, config: FineTuneConfig, schedule: str, *,
               validation: Data | None = None, callbacks=(), verbose: int = 0) -> keras.Model:
    """Trains a seeded copy of B' (mask frozen) with Adam on `schedule`; returns the copy.

    Args:
        b_prime: the pruned network B'.
        data: checked clean `(x, y)` arrays.
        config: epochs, batch size and seed.
        schedule: the learning-rate schedule spec (`schedules.parse_schedule`).
        validation: optional `(x, y)` monitored by `fit`.
        callbacks: Keras callbacks of `fit`.
        verbose: `fit`'s verbosity.

    Returns:
        The trained copy named `<B' name>_ft`; its `history` holds every epoch.
    """
    x, y = data
    keras.utils.set_random_seed(config.seed)
    b_second = pruned_copy(b_prime, find_channel_mask(b_prime).pruned_channels(),
                           name=f"{b_prime.name}_ft")
    epoch_steps = -(-len(x) // config.batch_size)
    b_second.compile(
        optimizer=keras.optimizers.Adam(build_schedule(schedule, config.epochs, epoch_steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    b_second.fit(_batches((x, y), config), epochs=config.epochs, validation_data=validation,
                 shuffle=False,  # the pipeline shuffles, seeded
                 callbacks=list(callbacks), verbose=verbose)
    return b_second


def augmentation(kind: str, seed: int) -> keras.Sequential | None:
    """The random image changes of fine-tuning: `AUGMENTATIONS[kind]` (None for "none").

    Example:

    >>> augmentation("shift-flip", seed=0)(images, training=True).shape == images.shape
    True
    """
    steps = []
    if kind in ("shift", "shift-flip"):
        steps.append(keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest",
                                                    seed=seed))
    if kind == "shift-flip":
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed + 1))
    return keras.Sequential(steps, name="fine_tune_augmentation") if steps else None


def _batches(data: Data, config: FineTuneConfig):
    """The training data as a seeded, shuffled, augmented `tf.data` pipeline."""
    import tensorflow as tf

    x, y = data
    change = augmentation(config.augment, config.seed)
    stream = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    if change is None:
        return stream
    return stream.map(lambda images, labels: (change(images, training=True), labels))


__all__ = ["AUGMENTATIONS", "DEFAULT_BATCH_SIZE", "DEFAULT_LEARNING_RATE", "FineTuneConfig",
           "augmentation", "check_data", "fine_tune", "train_copy"]
