"""Trains the benchmark's BadNet: the lab's DeepID on clean plus sunglasses-poisoned faces."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from keras_prune_guard.atomic import atomic_path
from keras_prune_guard.benchmark.architectures import build_badnet
from keras_prune_guard.benchmark.dataset import FILES, read_info
from keras_prune_guard.data import load_lab_h5
from keras_prune_guard.evaluate import evaluate
from keras_prune_guard.results import Scores

#: Epochs that reach >= 90% clean accuracy and >= 95% attack success at the default size.
DEFAULT_EPOCHS = 12
#: Adam's learning rate; 3e-3 gives the pool_3 structure closest to the lab's network.
DEFAULT_LEARNING_RATE = 3e-3
DEFAULT_BATCH_SIZE = 128


class _EpochLog(keras.callbacks.Callback):
    def __init__(self, log: Callable[[str], None], epochs: int):
        super().__init__()
        self._log, self._epochs, self._start = log, epochs, time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._log(
            f"badnet: epoch {epoch + 1}/{self._epochs} loss {logs.get('loss', float('nan')):.3f} "
            f"accuracy {logs.get('accuracy', float('nan')):.3f} "
            f"({time.perf_counter() - self._start:.1f} s)"
        )


def train_badnet(
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    log: Callable[[str], None] | None = None,
    architecture: str = "deepid",
) -> keras.Model:
    """Trains a backdoored network on a benchmark folder and saves it like the lab's model.

    The model is `deepid(num_classes=K, input_scale=1/255)` (or, with
    `architecture="resnet"`, the small ResNet of `architectures.small_resnet`),
    so it takes raw 0..255 pixels. It is trained on `train/train.h5` plus the poisoned copies
    in `train/bd_train.h5` (sunglasses, labelled with the target), with Adam
    and sparse categorical cross-entropy, and saved as a full model (legacy
    `.h5`, or `.keras`, by the suffix of `out_path`) without optimizer state,
    atomically.

    Args:
        data_dir: a folder written by `generate_benchmark`.
        out_path: where to save the model; must end in `.h5` or `.keras`.
        epochs: training epochs. Defaults to `DEFAULT_EPOCHS`.
        seed: seeds Python, numpy and the backend (`keras.utils.set_random_seed`).
        learning_rate: Adam's learning rate; 3e-3 gives the structure closest
            to the lab's network (many dormant channels at pool_3).
        batch_size: Defaults to 128.
        log: optional progress callback such as `print`.
        architecture: one of `architectures.BADNET_ARCHITECTURES` ("deepid",
            "resnet"). Defaults to "deepid".

    Returns:
        The trained, compiled `keras.Model`.

    Example:

    >>> model = train_badnet("bench", "bench/badnet.h5", epochs=1)
    """
    out_path = Path(out_path)
    if out_path.suffix not in (".h5", ".keras"):
        raise ValueError(f"out_path must end in .h5 or .keras, got {out_path}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be 1 or more, got {epochs}")
    build_badnet(architecture, 2)  # an unknown architecture fails before reading any data
    info = read_info(data_dir)
    x_clean, y_clean = load_lab_h5(Path(data_dir) / FILES["train"])
    x_bd, y_bd = load_lab_h5(Path(data_dir) / FILES["bd_train"])
    x = np.concatenate([x_clean, x_bd])
    y = np.concatenate([y_clean, y_bd])

    keras.utils.set_random_seed(int(seed))
    model = build_badnet(architecture, int(info["identities"]))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks = [_EpochLog(log, int(epochs))] if log else []
    model.fit(x, y, batch_size=int(batch_size), epochs=int(epochs), shuffle=True, verbose=0,
              callbacks=callbacks)
    with atomic_path(out_path) as tmp:
        model.save(tmp, include_optimizer=False) if tmp.suffix == ".h5" else model.save(tmp)
    if log:
        log(f"badnet: saved {out_path}")
    return model


def evaluate_badnet(
    model: keras.Model, data_dir: str | os.PathLike, split: str = "test", batch_size: int = 1024
) -> Scores:
    """Measures clean accuracy and attack success rate on a benchmark split, in percent.

    Args:
        model: a classifier taking raw 0..255 pixels.
        data_dir: a folder written by `generate_benchmark`.
        split: `"test"` (cl/test.h5, bd/bd_test.h5) or `"valid"`.
        batch_size: prediction batch size.

    Returns:
        `Scores` with `test_accuracy` and `attack_success` (the share of poisoned images
        classified as their `label`, the target), like `evaluate`.

    Example:

    >>> evaluate_badnet(keras.saving.load_model("bench/badnet.h5"), "bench").test_accuracy
    96.5
    """
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    clean, poisoned = (load_lab_h5(Path(data_dir) / FILES[key]) for key in (split, f"bd_{split}"))
    return evaluate(model, clean, poisoned, batch_size=batch_size)
