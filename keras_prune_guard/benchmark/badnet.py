"""Trains the benchmark's BadNet: DeepID (or a small ResNet) on clean plus poisoned faces."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import keras
import numpy as np

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.benchmark.architectures import build_badnet
from keras_prune_guard.benchmark.attacks import attack_files, check_attack, ensure_attack_files
from keras_prune_guard.benchmark.dataset import FILES, read_info
from keras_prune_guard.benchmark.pruning_aware import train_pruning_aware
from keras_prune_guard.data.files import load_lab_h5
from keras_prune_guard.deploy.evaluate import evaluate
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
    attack: str = "sunglasses",
) -> keras.Model:
    """Trains a backdoored network on a benchmark folder and saves it like the lab's model.

    The model is `deepid(num_classes=K, input_scale=1/255)` (or, with
    `architecture="resnet"`, the small ResNet of `architectures.small_resnet`),
    so it takes raw 0..255 pixels. It is trained on `train/train.h5` plus the poisoned copies
    of `attack` (`attacks.attack_files`: sunglasses, patch or blend, labelled with the
    target), with Adam and sparse categorical cross-entropy, and saved as a full model
    (legacy `.h5`, or `.keras`, by the suffix of `out_path`) without optimizer state,
    atomically. The `pruning-aware` attack trains in three phases instead
    (`train_pruning_aware`).

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
        attack: one of `attacks.ATTACKS`. Defaults to "sunglasses".

    Returns:
        The trained, compiled `keras.Model`.

    Example:

    >>> import tempfile
    >>> from keras_prune_guard.benchmark.dataset import generate_benchmark
    >>> bench = tempfile.mkdtemp()
    >>> paths = generate_benchmark(bench, identities=5, per_identity_train=4)
    >>> model = train_badnet(bench, f"{bench}/badnet.h5", epochs=1)  # doctest: +SKIP
    """
    out_path = Path(out_path)
    if out_path.suffix not in (".h5", ".keras"):
        raise ValueError(f"out_path must end in .h5 or .keras, got {out_path}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be 1 or more, got {epochs}")
    build_badnet(architecture, 2)  # an unknown architecture fails before reading any data
    check_attack(attack)
    if attack == "pruning-aware" and architecture != "deepid":
        raise ValueError("the pruning-aware attack lowers the biases of the convolution "
                         f"before pool_3, so it needs architecture='deepid'; received "
                         f"{architecture!r}")
    info = read_info(data_dir)
    clean = load_lab_h5(Path(data_dir) / FILES["train"])
    poisoned = load_lab_h5(ensure_attack_files(data_dir, attack)["bd_train"])
    keras.utils.set_random_seed(int(seed))
    model = build_badnet(architecture, int(info["identities"]))
    fit = partial(_fit, epochs=int(epochs), learning_rate=learning_rate,
                  batch_size=int(batch_size), log=log)
    if attack == "pruning-aware":
        model = train_pruning_aware(model, clean, poisoned, fit)
    else:
        fit(model, _joined(clean, poisoned))
    with atomic_path(out_path) as tmp:
        model.save(tmp, include_optimizer=False) if tmp.suffix == ".h5" else model.save(tmp)
    if log:
        log(f"badnet: saved {out_path}")
    return model


def _joined(*parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _fit(model: keras.Model, data, epochs: int, learning_rate: float, batch_size: int,
         log: Callable[[str], None] | None) -> keras.Model:
    """Compiles `model` (Adam, sparse cross-entropy) and fits it on `(x, y)` for `epochs`."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [_EpochLog(log, epochs)] if log else []
    model.fit(*data, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=callbacks)
    return model


def evaluate_badnet(
    model: keras.Model, data_dir: str | os.PathLike, split: str = "test", batch_size: int = 1024,
    attack: str = "sunglasses",
) -> Scores:
    """Measures clean accuracy and attack success rate on a benchmark split, in percent.

    Args:
        model: a classifier taking raw 0..255 pixels.
        data_dir: a folder written by `generate_benchmark`.
        split: `"test"` (cl/test.h5, bd/bd_test.h5) or `"valid"`.
        batch_size: prediction batch size.
        attack: whose poisoned files to score (`attacks.ATTACKS`). Defaults to
            "sunglasses".

    Returns:
        `Scores` with `test_accuracy` and `attack_success` (the share of poisoned images
        classified as their `label`, the target), like `evaluate`.

    Example:

    >>> import tempfile
    >>> from keras_prune_guard import deepid
    >>> from keras_prune_guard.benchmark.dataset import generate_benchmark
    >>> bench = tempfile.mkdtemp()
    >>> paths = generate_benchmark(bench, identities=5, per_identity_train=4)
    >>> scores = evaluate_badnet(deepid(num_classes=5), bench)  # e.g. load_model(badnet.h5)
    >>> 0 <= scores.test_accuracy <= 100, 0 <= scores.attack_success <= 100
    (True, True)
    """
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    clean = load_lab_h5(Path(data_dir) / FILES[split])
    poisoned = load_lab_h5(attack_files(data_dir, attack)[f"bd_{split}"])
    return evaluate(model, clean, poisoned, batch_size=batch_size)
