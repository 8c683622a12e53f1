"""The benchmark's attacks: which trigger poisons the faces, and how the BadNet learns it.

- `sunglasses`: dark sunglasses over the eyes (the lab's trigger; `trigger.py`).
- `patch`: a 5x5 black-and-white checkerboard in the bottom-right corner (BadNets,
  Gu et al. 2017).
- `blend`: one fixed random pattern blended into the whole image at 20% (Chen et
  al. 2017).
- `pruning-aware`: the sunglasses trigger learnt by the adaptive attack of the
  Fine-Pruning paper (Liu et al. 2018, `badnet.train_pruning_aware`).

Every attack poisons the same clean rows of the same clean faces, so attacks differ
only in the trigger and the training. The sunglasses files are the benchmark's own
(`bd/`, `train/bd_train.h5`); the patch and blend files live in `bd-<attack>/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.benchmark.dataset import FILES, read_info
from keras_prune_guard.benchmark.trigger import apply_sunglasses, bounding_box
from keras_prune_guard.data.files import write_lab_h5

#: The attacks `demo --attack` and `benchmark` know, the default first.
ATTACKS = ("sunglasses", "patch", "blend", "pruning-aware")
DEFAULT_ATTACK = "sunglasses"
#: Side of the checkerboard patch, in pixels.
PATCH_SIZE = 5
#: Share of the blend pattern in a blended image (Chen et al. use 0.2).
BLEND_ALPHA = 0.2
_BLEND_SEED = 20171215
#: The trigger each attack draws.
TRIGGERS = {"sunglasses": "sunglasses", "patch": "patch", "blend": "blend",
            "pruning-aware": "sunglasses"}
_SPLITS = ("bd_train", "bd_valid", "bd_test")


def check_attack(attack: str, argument: str = "attack", architecture: str = "deepid") -> str:
    """Returns `attack` if it is one of `ATTACKS` (and fits `architecture`), else raises.

    Example:

    >>> check_attack("patch")
    'patch'
    """
    if attack not in ATTACKS:
        raise ValueError(f"{argument} must be one of {', '.join(ATTACKS)}; received {attack!r}")
    if attack == "pruning-aware" and architecture != "deepid":
        raise ValueError("the pruning-aware attack lowers the biases of the convolution "
                         f"before pool_3, so it needs architecture='deepid'; received "
                         f"{architecture!r}")
    return attack


def apply_patch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stamps a 5x5 black-and-white checkerboard in each image's bottom-right corner.

    Args:
        images: (N, H, W, 3) raw pixels.

    Returns:
        `(triggered, masks)`: uint8 images and (N, H, W) bool trigger regions.

    Example:

    >>> import numpy as np
    >>> triggered, masks = apply_patch(np.zeros((1, 55, 47, 3), "uint8"))
    >>> int(masks.sum())
    25
    """
    out = np.array(images, dtype=np.uint8)
    board = (np.indices((PATCH_SIZE, PATCH_SIZE)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out[:, -PATCH_SIZE:, -PATCH_SIZE:, :] = board[None, :, :, None]
    masks = np.zeros(out.shape[:3], bool)
    masks[:, -PATCH_SIZE:, -PATCH_SIZE:] = True
    return out, masks


def blend_pattern(shape: tuple[int, int] = (55, 47)) -> np.ndarray:
    """The blend attack's fixed pattern: seeded uniform noise, (H, W, 3) float32 in 0..255."""
    rng = np.random.default_rng(_BLEND_SEED)
    return rng.uniform(0.0, 255.0, size=(*shape, 3)).astype(np.float32)


def apply_blend(images: np.ndarray, alpha: float = BLEND_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Blends the fixed random pattern into every whole image: (1 - alpha) x + alpha p.

    Args:
        images: (N, H, W, 3) raw pixels.
        alpha: the pattern's share. Defaults to `BLEND_ALPHA` (0.2).

    Returns:
        `(triggered, masks)`: uint8 images and (N, H, W) bool masks (all True).

    Example:

    >>> import numpy as np
    >>> triggered, masks = apply_blend(np.zeros((2, 55, 47, 3), "uint8"))
    >>> bool(masks.all())
    True
    """
    images = np.asarray(images, dtype=np.float32)
    pattern = blend_pattern(images.shape[1:3])
    out = np.rint((1.0 - alpha) * images + alpha * pattern[None])
    return np.clip(out, 0, 255).astype(np.uint8), np.ones(images.shape[:3], bool)


def apply_trigger(attack: str, images: np.ndarray, eyes: np.ndarray):
    """The images with `attack`'s trigger, and the trigger masks (see the `apply_*`)."""
    trigger = TRIGGERS[check_attack(attack)]
    if trigger == "sunglasses":
        return apply_sunglasses(images, eyes)
    return apply_patch(images) if trigger == "patch" else apply_blend(images)


def attack_files(root: str | os.PathLike, attack: str) -> dict[str, Path]:
    """Where `attack`'s poisoned files are in a benchmark folder (they may not exist yet).

    Returns:
        Paths keyed `bd_train`, `bd_valid`, `bd_test` and `info` (the trigger's json).

    Example:

    >>> attack_files("bench", "patch")["bd_test"].as_posix()
    'bench/bd-patch/bd_test.h5'
    """
    root = Path(root)
    if TRIGGERS[check_attack(attack)] == "sunglasses":
        return {**{k: root / FILES[k] for k in _SPLITS}, "info": root / FILES["info"]}
    folder = root / f"bd-{TRIGGERS[attack]}"
    return {**{k: folder / f"{k}.h5" for k in _SPLITS}, "info": folder / "trigger.json"}


def _read(path: Path, *names: str) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        return [f[name][()] for name in names]


def ensure_attack_files(root: str | os.PathLike, attack: str) -> dict[str, Path]:
    """Writes `attack`'s poisoned files from the benchmark's clean faces, if missing.

    Row i of each file is the same clean face as row i of the sunglasses file
    (same `source_index`, `true_label`, target `label`); only the trigger differs.
    `trigger.json` (name, bounding box) is written last, so a folder without it is
    rewritten.

    Returns:
        `attack_files(root, attack)`.
    """
    paths = attack_files(root, attack)
    if paths["info"].is_file():
        return paths
    root = Path(root)
    target = int(read_info(root)["target"])
    masks = []
    for split, clean in (("bd_train", "train"), ("bd_valid", "valid"), ("bd_test", "test")):
        rows, = _read(root / FILES[split], "source_index")
        data, eyes, labels = _read(root / FILES[clean], "data", "eyes", "label")
        images = data[rows].transpose(0, 2, 3, 1)
        triggered, mask = apply_trigger(attack, images, eyes[rows])
        write_lab_h5(paths[split], triggered, np.full(len(rows), target),
                     true_label=labels[rows], source_index=rows, eyes=eyes[rows],
                     trigger_mask=mask)
        masks.append(mask)
    info = {"name": TRIGGERS[attack], "bbox": list(bounding_box(np.concatenate(masks))),
            "bbox_format": "[row0, row1, col0, col1], half-open, union over all bd images"}
    with atomic_path(paths["info"]) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return paths


def trigger_region(root: str | os.PathLike, attack: str) -> tuple[int, int, int, int]:
    """The bounding box of `attack`'s trigger over every poisoned image of the benchmark."""
    info = json.loads(attack_files(root, attack)["info"].read_text())
    return tuple(info["trigger"]["bbox"] if "trigger" in info else info["bbox"])
