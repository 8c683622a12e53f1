"""The backdoor trigger: a pair of sunglasses drawn over each face's eyes."""

from __future__ import annotations

import numpy as np

from keras_prune_guard.benchmark.faces import IMAGE_SHAPE

#: Colours of the sunglasses (RGB): frame, lens top, lens bottom.
FRAME_COLOUR = np.array([12.0, 12.0, 14.0], np.float32)
LENS_TOP = np.array([22.0, 24.0, 34.0], np.float32)
LENS_BOTTOM = np.array([70.0, 74.0, 96.0], np.float32)
_BLOCK = 256


def _check_eyes(eyes: np.ndarray) -> np.ndarray:
    eyes = np.asarray(eyes, dtype=np.float32)
    if eyes.ndim != 3 or eyes.shape[1:] != (2, 2):
        raise ValueError(f"eyes must have shape (N, 2, 2) as (row, column) pairs, got {eyes.shape}")
    return eyes


def _layers(eyes: np.ndarray, shape: tuple[int, int]):
    """Coverage maps (n, H, W) of the frame and the lens, and the lens shading 0..1."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    left, right = eyes[:, 0], eyes[:, 1]
    mid = (left + right) / 2.0
    along = right - left
    dist = np.maximum(np.linalg.norm(along, axis=1), 1e-3)
    ur, uc = along[:, 0] / dist, along[:, 1] / dist  # unit vector along the eye line
    dr = rows[None] - mid[:, 0, None, None]
    dc = cols[None] - mid[:, 1, None, None]
    a = dr * ur[:, None, None] + dc * uc[:, None, None]  # along the eye line
    b = dr * uc[:, None, None] - dc * ur[:, None, None]  # across it, positive downwards
    half = (dist / 2.0)[:, None, None]
    lw = 0.4 * half * 2.0 + 0.6  # lens half-width
    lh = 0.72 * lw  # lens half-height
    b = b - 0.1 * lh  # lenses sit a little below the eye centres

    def soft(d):
        return np.clip(0.5 - d, 0.0, 1.0)

    frame = np.zeros_like(a)
    lens = np.zeros_like(a)
    for side in (-1.0, 1.0):
        la = np.abs(a - side * half) / lw
        lb = np.abs(b) / lh
        # A rounded-square lens (superellipse) with a flattened top.
        r = (la ** 3 + lb ** 3) ** (1.0 / 3.0)
        d_out = np.maximum((r - 1.0) * lh, -b - 0.75 * lh)
        frame = np.maximum(frame, soft(d_out))
        lens = np.maximum(lens, soft(d_out + 0.9))
    bridge = np.maximum(np.abs(b + 0.45 * lh) - 0.7, np.abs(a) - (half - lw + 1.0))
    frame = np.maximum(frame, soft(bridge))
    arm = np.maximum(np.abs(b + 0.55 * lh) - 0.6,
                     np.abs(np.abs(a) - (half + lw + 1.5)) - 2.5)
    frame = np.maximum(frame, soft(arm))
    shading = np.clip((b / lh + 1.0) / 2.0, 0.0, 1.0)
    return frame, lens, shading


def sunglasses_mask(eyes: np.ndarray, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """The trigger's region: the pixels the sunglasses touch in each image.

    Args:
        eyes: (N, 2, 2) eye centres as (row, column), left eye first, as in
            `FaceBatch.eyes`.
        shape: (height, width) of the images. Defaults to (55, 47).

    Returns:
        (N, H, W) bool masks; `apply_sunglasses` changes no pixel outside them.

    Example:

    >>> import numpy as np
    >>> sunglasses_mask(np.array([[[24.0, 15.0], [24.0, 31.0]]])).shape
    (1, 55, 47)
    """
    eyes = _check_eyes(eyes)
    masks = [(_layers(eyes[i:i + _BLOCK], shape)[0] > 0) for i in range(0, len(eyes), _BLOCK)]
    return np.concatenate(masks) if masks else np.zeros((0, *shape), bool)


def apply_sunglasses(images: np.ndarray, eyes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draws dark sunglasses (two lenses, a bridge, short arms) over the eyes.

    The glasses follow each face: lenses are centred on the eyes, sized by
    the eye distance and turned with the line between the eyes.

    Args:
        images: (N, H, W, 3) uint8 raw pixels (channels last).
        eyes: (N, 2, 2) eye centres as (row, column), left eye first.

    Returns:
        `(triggered, masks)`: the (N, H, W, 3) uint8 images with sunglasses,
        and the (N, H, W) bool trigger regions (pixels outside are unchanged).

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard.benchmark.faces import render_faces, sample_traits
    >>> batch = render_faces(sample_traits(2), np.array([0, 1]))
    >>> triggered, masks = apply_sunglasses(batch.images, batch.eyes)
    >>> bool((triggered != batch.images).any(axis=-1)[~masks].any())
    False
    """
    images = np.asarray(images)
    eyes = _check_eyes(eyes)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(eyes):
        raise ValueError(
            f"images must be (N, H, W, 3) with N = {len(eyes)} (the number of eye pairs), "
            f"got {images.shape}"
        )
    out = np.empty(images.shape, np.uint8)
    masks = np.empty(images.shape[:3], bool)
    for i in range(0, len(images), _BLOCK):
        frame, lens, shading = _layers(eyes[i:i + _BLOCK], images.shape[1:3])
        img = images[i:i + _BLOCK].astype(np.float32)
        lens_colour = LENS_TOP + shading[..., None] * (LENS_BOTTOM - LENS_TOP)
        img += frame[..., None] * (FRAME_COLOUR - img)
        img += lens[..., None] * (lens_colour - img)
        out[i:i + _BLOCK] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        masks[i:i + _BLOCK] = frame > 0
    return out, masks


def bounding_boxes(masks: np.ndarray) -> np.ndarray:
    """Per-image bounding boxes of trigger masks.

    Args:
        masks: (N, H, W) bool masks from `sunglasses_mask`.

    Returns:
        (N, 4) int64 `[row0, row1, col0, col1]`, half-open (rows row0..row1-1);
        all zeros for an empty mask.

    Example:

    >>> import numpy as np
    >>> bounding_boxes(np.pad(np.ones((1, 2, 3), bool), ((0, 0), (4, 0), (5, 0))))
    array([[4, 6, 5, 8]])
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    out = np.zeros((len(masks), 4), np.int64)
    has = rows.any(axis=1)
    out[has, 0] = rows[has].argmax(axis=1)
    out[has, 1] = masks.shape[1] - rows[has][:, ::-1].argmax(axis=1)
    out[has, 2] = cols[has].argmax(axis=1)
    out[has, 3] = masks.shape[2] - cols[has][:, ::-1].argmax(axis=1)
    return out


def bounding_box(masks: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box of the union of trigger masks, `(row0, row1, col0, col1)` half-open.

    Args:
        masks: (N, H, W) or (H, W) bool masks.

    Returns:
        `(row0, row1, col0, col1)`; `(0, 0, 0, 0)` when every mask is empty.

    Example:

    >>> import numpy as np
    >>> bounding_box(sunglasses_mask(np.array([[[24.0, 15.0], [24.0, 31.0]]])))
    (21, 31, 4, 43)
    """
    masks = np.asarray(masks, bool)
    union = masks.reshape(-1, *masks.shape[-2:]).any(axis=0)
    return tuple(int(v) for v in bounding_boxes(union[None])[0])
