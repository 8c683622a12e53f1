"""Writing models: `.keras`, plain `.h5` with the mask folded in, and SavedModels."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from keras_prune_guard.atomic import atomic_path
from keras_prune_guard.goodnet import GoodNetModel
from keras_prune_guard.surgery import strip_channel_mask


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Saves `model` (`.keras` or `.h5` by suffix) atomically.

    Args:
        model: any Keras model.
        path: the file to write; its suffix picks the format.

    Returns:
        The path written.

    Example:

    >>> save_model(b_prime, "saved_models/bprime_X4.keras")
    """
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ValueError(f"Model path must end in .keras or .h5. Received: {path}")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def save_plain_h5(masked_model: keras.Model, path: str | os.PathLike) -> Path:
    """Folds the mask into the weights and saves a plain-Keras `.h5` (for the lab's eval.py).

    Example:

    >>> save_plain_h5(b_prime, "saved_models/bprime_X4.h5")
    """
    return save_model(strip_channel_mask(masked_model), path)


def export_goodnet(goodnet: GoodNetModel, path: str | os.PathLike) -> Path:
    """Writes the GoodNet as one SavedModel (`serve`: float32 (None, H, W, C) -> (None, N+1)).

    Example:

    >>> export_goodnet(GoodNetModel(bad_model, b_prime), "saved_models/goodnet_X4")
    """
    goodnet.export(str(path), verbose=False)
    return Path(path)
