"""Fine-pruning: train a pruned network B' on clean data, its mask frozen, giving B''."""

from __future__ import annotations

import keras

from keras_prune_guard._compat import deprecated
from keras_prune_guard.config import (
    AUGMENTATIONS,
    DEFAULT_FINE_TUNE_BATCH_SIZE,
    DEFAULT_LEARNING_RATE,
    FineTuneConfig,
)
from keras_prune_guard.defend.choice import choose_fine_tune
from keras_prune_guard.defend.train import Data, augmentation, check_data, train_copy
from keras_prune_guard.model.surgery import find_channel_mask

# The defaults live in config.FineTuneConfig; restated here under their 0.1 names.
DEFAULT_BATCH_SIZE = DEFAULT_FINE_TUNE_BATCH_SIZE


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

    >>> import numpy as np
    >>> from keras_prune_guard import deepid, insert_channel_mask
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> b_prime = insert_channel_mask(deepid(num_classes=3), pruned_channels=[0, 5])  # prune()
    >>> b_second = fine_tune(b_prime, (x, y), epochs=1, learning_rate=1e-3)  # doctest: +SKIP
    >>> b_second.name, b_second.get_layer("pool_3_mask").pruned_channels()  # doctest: +SKIP
    ('deepid_ft', [0, 5])
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

        return choose_fine_tune(b_prime, (x, y), config).model
    return train_copy(b_prime, (x, y), config, f"cosine:{config.learning_rate}",
                      validation=validation, verbose=verbose)


__all__ = ["AUGMENTATIONS", "DEFAULT_BATCH_SIZE", "DEFAULT_LEARNING_RATE", "FineTuneConfig",
           "augmentation", "check_data", "fine_tune", "train_copy"]
