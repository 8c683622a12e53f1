"""`ensure_benchmark`: the face benchmark and its BadNet, built once and then read from a cache."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.benchmark.architectures import build_badnet
from keras_prune_guard.benchmark.attacks import (
    attack_files,
    check_attack,
    ensure_attack_files,
    trigger_region,
)
from keras_prune_guard.benchmark.badnet import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    evaluate_badnet,
    train_badnet,
)
from keras_prune_guard.benchmark.dataset import (
    DEFAULT_IDENTITIES,
    FILES,
    FORMAT_VERSION,
    generate_benchmark,
    read_info,
)

#: Environment variable naming the default cache folder.
CACHE_ENV = "KERAS_PRUNE_GUARD_CACHE"


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where a cached benchmark's files are.

    Attributes:
        root: the benchmark's folder (one per parameter set).
        train, bd_train: clean training faces and their poisoned copies.
        valid, test: clean faces (`cl/valid.h5`, `cl/test.h5`).
        bd_valid, bd_test: the same faces with the attack's trigger, labelled with the
            target (`true_label` holds their identity).
        info: `benchmark.json` (parameters, the sunglasses' bounding box).
        model: the trained BadNet, a full-model legacy `.h5` taking raw pixels.
        model_info: json with the BadNet's training settings and test metrics.
        attack: the attack (`attacks.ATTACKS`).
        trigger_info: json naming the attack's trigger and its bounding box
            (`benchmark.json` for the sunglasses).
    """

    root: Path
    train: Path
    bd_train: Path
    valid: Path
    test: Path
    bd_valid: Path
    bd_test: Path
    info: Path
    model: Path
    model_info: Path
    attack: str = "sunglasses"
    trigger_info: Path | None = None

    @property
    def trigger_region(self) -> tuple[int, int, int, int]:
        """The trigger's bounding box `(row0, row1, col0, col1)` over all poisoned images."""
        return trigger_region(self.root, self.attack)


def default_cache_dir() -> Path:
    """`$KERAS_PRUNE_GUARD_CACHE` if set, else `~/.cache/keras-prune-guard`.

    Returns:
        The folder as a `Path` (not created).

    Example:

    >>> default_cache_dir().name
    'keras-prune-guard'
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "keras-prune-guard"


def model_key(architecture: str, epochs: int, attack: str = "sunglasses") -> str:
    """The file stem of a trained BadNet inside a benchmark folder.

    Args:
        architecture: the network trained ("deepid", "resnet").
        epochs: its training epochs.
        attack: the attack it learnt (`attacks.ATTACKS`). Defaults to "sunglasses".

    Returns:
        `badnet-e<epochs>` for the default DeepID with sunglasses (as before
        architectures and attacks existed, so caches stay valid), else
        `badnet-[<architecture>-][<attack>-]e<epochs>`.

    Example:

    >>> model_key("resnet", 12)
    'badnet-resnet-e12'
    >>> model_key("deepid", 12, "patch")
    'badnet-patch-e12'
    """
    parts = [p for p, default in ((architecture, "deepid"), (attack, "sunglasses"))
             if p != default]
    return "-".join(["badnet", *parts, f"e{int(epochs)}"])


def benchmark_key(
    identities: int,
    per_identity_train: int,
    valid_per_identity: int,
    test_per_identity: int,
    poison_fraction: float,
    target: int,
    seed: int,
) -> str:
    """The cache subfolder name of one parameter set (includes the format version).

    Args:
        identities, per_identity_train, valid_per_identity, test_per_identity,
        poison_fraction, target, seed: as for `generate_benchmark`.

    Returns:
        A folder name such as `faces-v1-k200-n25-9-10-p0.1-t0-s0`.

    Example:

    >>> benchmark_key(200, 25, 9, 10, 0.1, 0, 0)
    'faces-v1-k200-n25-9-10-p0.1-t0-s0'
    """
    return (f"faces-v{FORMAT_VERSION}-k{int(identities)}-n{int(per_identity_train)}-"
            f"{int(valid_per_identity)}-{int(test_per_identity)}-p{float(poison_fraction):g}-"
            f"t{int(target)}-s{int(seed)}")


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """Serialises builders of one cache folder across processes (POSIX only)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # posix only: elsewhere builders are not serialised
    except ImportError:  # Windows: no lock; atomic writes still keep every file whole
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _data_complete(root: Path) -> bool:
    if not all((root / rel).is_file() for rel in FILES.values()):
        return False
    try:
        return read_info(root).get("format_version") == FORMAT_VERSION
    except (ValueError, json.JSONDecodeError):
        return False


def ensure_benchmark(
    cache_dir: str | os.PathLike | None = None,
    identities: int = DEFAULT_IDENTITIES,
    per_identity_train: int = 25,
    valid_per_identity: int = 9,
    test_per_identity: int = 10,
    poison_fraction: float = 0.1,
    target: int = 0,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    log: Callable[[str], None] | None = print,
    architecture: str = "deepid",
    attack: str = "sunglasses",
) -> BenchmarkPaths:
    """Returns the face benchmark and its BadNet, generating/training only what is missing.

    The files live in `cache_dir/<key>/` where the key names every data
    parameter and the format version (`benchmark_key`); the model is
    `<model_key>.h5` in that folder (`badnet-e<epochs>.h5` for DeepID,
    `badnet-resnet-e<epochs>.h5` for the ResNet), with `<model_key>.json`
    (settings, test clean accuracy and attack success rate) written last.
    A second call with the same arguments only checks that the files exist.
    Concurrent callers wait for each other (a file lock, on POSIX).

    Args:
        cache_dir: the cache folder; defaults to `default_cache_dir()`
            (`$KERAS_PRUNE_GUARD_CACHE` or `~/.cache/keras-prune-guard`).
        identities: K, the number of classes. Defaults to `DEFAULT_IDENTITIES`.
        per_identity_train: clean training images per identity.
        valid_per_identity: validation images per identity.
        test_per_identity: test images per identity.
        poison_fraction: poisoned training copies per clean training image.
        target: the backdoor's target class.
        seed: seeds the data and the training.
        epochs: BadNet training epochs. Defaults to `DEFAULT_EPOCHS`.
        log: progress callback; `None` for silence. Defaults to `print`.
        architecture: the network backdoored, one of
            `architectures.BADNET_ARCHITECTURES` ("deepid", "resnet"); part of
            the model's cache key. Defaults to "deepid".
        attack: the backdoor attack, one of `attacks.ATTACKS` ("sunglasses",
            "patch", "blend", "pruning-aware"); part of the model's cache key, and
            `bd_*` of the returned paths are its poisoned files. Defaults to
            "sunglasses".

    Returns:
        The `BenchmarkPaths`.

    Example (the first call trains the BadNet, for about a minute):

    >>> import keras
    >>> paths = ensure_benchmark(log=None)  # doctest: +SKIP
    >>> model = keras.saving.load_model(paths.model)  # doctest: +SKIP
    """
    say = log or (lambda _msg: None)
    build_badnet(architecture, 2)  # an unknown architecture fails before any work
    check_attack(attack, architecture=architecture)
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = base / benchmark_key(identities, per_identity_train, valid_per_identity,
                                test_per_identity, poison_fraction, target, seed)
    files = {name: root / rel for name, rel in FILES.items()}
    poisoned = attack_files(root, attack)
    files.update({k: poisoned[k] for k in ("bd_train", "bd_valid", "bd_test")})
    stem = model_key(architecture, epochs, attack)
    paths = BenchmarkPaths(root=root, model=root / f"{stem}.h5", model_info=root / f"{stem}.json",
                           attack=attack, trigger_info=poisoned["info"], **files)
    if _data_complete(root) and poisoned["info"].is_file() and paths.model.is_file() and \
            paths.model_info.is_file():
        say(f"benchmark: using cached {root}")
        return paths
    with _lock(root):
        if not _data_complete(root):
            start = time.perf_counter()
            say(f"benchmark: generating {identities} identities in {root}")
            generate_benchmark(root, identities=identities, per_identity_train=per_identity_train,
                               valid_per_identity=valid_per_identity,
                               test_per_identity=test_per_identity,
                               poison_fraction=poison_fraction, target=target, seed=seed, log=log)
            say(f"benchmark: data ready in {time.perf_counter() - start:.1f} s")
        ensure_attack_files(root, attack)
        if not paths.model_info.is_file():
            seconds = None
            if paths.model.is_file():  # trained, but stopped before its record was written
                model = keras.saving.load_model(paths.model)
            else:
                start = time.perf_counter()
                say(f"benchmark: training the {architecture} BadNet ({attack} attack) for "
                    f"{epochs} epochs")
                model = train_badnet(root, paths.model, epochs=epochs, seed=seed, log=log,
                                     architecture=architecture, attack=attack)
                seconds = round(time.perf_counter() - start, 1)
            metrics = evaluate_badnet(model, root, "test", attack=attack)
            how = "found" if seconds is None else f"trained in {seconds} s"
            say(f"benchmark: BadNet {how}; test clean accuracy "
                f"{metrics.test_accuracy:.2f}%, attack success {metrics.attack_success:.2f}%")
            record = {"architecture": architecture, "attack": attack, "epochs": int(epochs),
                      "seed": int(seed),
                      "learning_rate": DEFAULT_LEARNING_RATE, "batch_size": DEFAULT_BATCH_SIZE,
                      "train_seconds": seconds, "test": metrics.to_dict()}
            with atomic_path(paths.model_info) as tmp:
                tmp.write_text(json.dumps(record, indent=2) + "\n")
    return paths
