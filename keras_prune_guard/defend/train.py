"""Training a pruned network B' on clean data, its mask frozen: one seeded copy per schedule."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.config import FineTuneConfig
from keras_prune_guard.data.checks import check_images, check_labels, num_classes_or_none
from keras_prune_guard.defend.gates import KeepZeroed
from keras_prune_guard.defend.schedules import build_schedule
from keras_prune_guard.model.surgery import find_channel_mask, pruned_copy

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
        ValueError: not a pair, or what `data.checks` refuses (images that do not fit
            the model, labels that are not one class id per image within its classes).

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> x, y = check_data(deepid(num_classes=3), (np.zeros((2, 55, 47, 3)), [2.0, 0.0]), "valid")
    >>> x.dtype, y
    (dtype('float32'), array([2, 0]))
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what} must be a pair (x, y) of arrays. Received: {type(data)}")
    x = np.asarray(data[0], dtype="float32")
    check_images(model, x, what)
    if len(x) == 0:
        raise ValueError(f"{what}: found no images; expected at least one labelled image.")
    return x, check_labels(data[1], len(x), what, num_classes_or_none(model))


def train_copy(b_prime: keras.Model, data: Data, config: FineTuneConfig, schedule: str, *,
               validation: Data | None = None, callbacks=(), verbose: int = 0) -> keras.Model:
    """Trains a seeded copy of B' (mask frozen) with Adam on `schedule`; returns the copy.

    Channels whose weights are zero at the start (pruned by RNP or ANP, `gates.zero_units`)
    are zeroed again after every batch, so they stay pruned as the mask's channels do.

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
                 callbacks=[KeepZeroed(), *callbacks],  # channels a defense zeroed stay 0
                 verbose=verbose)
    return b_second


def augmentation(kind: str, seed: int) -> keras.Sequential | None:
    """The random image changes of fine-tuning: `AUGMENTATIONS[kind]` (None for "none").

    Example:

    >>> import numpy as np
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 55, 47, 3)).astype("float32")
    >>> augmentation("shift-flip", seed=0)(images, training=True).shape == images.shape
    True
    >>> augmentation("none", seed=0) is None
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

    x, y = data
    change = augmentation(config.augment, config.seed)
    stream = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    if change is None:
        return stream
    return stream.map(lambda images, labels: (change(images, training=True), labels))


__all__ = ["SHIFT", "Data", "augmentation", "check_data", "train_copy"]
