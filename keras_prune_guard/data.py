"""The lab's HDF5 layout (`data` as (N, 3, H, W), `label`) and image folders."""

from __future__ import annotations

import os

import h5py
import numpy as np

from keras_prune_guard.atomic import atomic_path


def write_lab_h5(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    **extra: np.ndarray,
) -> None:
    """Writes images in the lab's layout, atomically.

    Args:
        path: the `.h5` file to write.
        images: (N, H, W, C) channels-last images, stored as uint8 (N, C, H, W).
        labels: (N,) integer labels, stored as int64 `label`.
        **extra: more (N, ...) datasets to store, such as `true_label`.

    Example:

    >>> write_lab_h5("valid.h5", np.zeros((2, 55, 47, 3), "uint8"), np.array([0, 1]))
    """
    images = np.asarray(images)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=np.clip(images, 0, 255).astype("uint8").transpose(0, 3, 1, 2))
        f.create_dataset("label", data=np.asarray(labels, dtype="int64"))
        for name, values in extra.items():
            f.create_dataset(name, data=np.asarray(values))
