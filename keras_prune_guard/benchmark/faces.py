"""A seeded, numpy-only generator of face-like 55x47x3 images for K identities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Image size of the lab's DeepID network (height, width).
IMAGE_SHAPE = (55, 47)
#: Where the face centre sits in an unshifted image (row, column).
FACE_CENTRE = (30.0, 23.0)
#: Images rendered per vectorised block (small blocks stay in the CPU cache).
_BLOCK = 128
#: Share of images whose background is their identity's colour (the rest: random colours).
_BACKGROUND_TIE = 0.5

_SKIN_LIGHT = np.array([236.0, 200.0, 176.0])
_SKIN_DARK = np.array([92.0, 60.0, 42.0])
_HAIR = np.array(
    [[20, 16, 14], [58, 38, 24], [104, 70, 40], [196, 160, 96], [150, 64, 30], [150, 148, 146],
     [225, 222, 215], [40, 30, 30]], dtype=float)
_IRIS = np.array([[70, 45, 25], [40, 28, 20], [70, 110, 160], [80, 120, 80], [110, 90, 60]],
                 dtype=float)


@dataclass(frozen=True)
class FaceTraits:
    """The fixed traits of K identities; every field has K rows.

    Lengths are in pixels of an unscaled face, centred on the face centre
    (y down, x right). Colours are RGB floats 0..255.
    """

    face_rx: np.ndarray
    face_ry: np.ndarray
    jaw: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    hair_volume: np.ndarray
    hairline: np.ndarray
    hair_part: np.ndarray
    hair_length: np.ndarray
    beard: np.ndarray
    eye_y: np.ndarray
    eye_dx: np.ndarray
    eye_rx: np.ndarray
    eye_ry: np.ndarray
    iris: np.ndarray
    brow_gap: np.ndarray
    brow_len: np.ndarray
    brow_thick: np.ndarray
    brow_tilt: np.ndarray
    nose_len: np.ndarray
    nose_width: np.ndarray
    mouth_y: np.ndarray
    mouth_rx: np.ndarray
    lip_thick: np.ndarray
    lips: np.ndarray
    smile: np.ndarray
    background: np.ndarray

    @property
    def identities(self) -> int:
        """The number of identities K."""
        return int(self.face_rx.shape[0])


@dataclass(frozen=True)
class FaceBatch:
    """Rendered faces and where their eyes are.

    Attributes:
        images: (N, 55, 47, 3) uint8 raw pixels.
        identity: (N,) int64 identity of each image.
        eyes: (N, 2, 2) float32 eye centres as (row, column); `eyes[:, 0]`
            is the eye on the image's left, `eyes[:, 1]` the one on its right.
        eye_size: (N,) float32 eye half-width in image pixels.
        roll: (N,) float32 in-plane rotation of the face in radians.
    """

    images: np.ndarray
    identity: np.ndarray
    eyes: np.ndarray
    eye_size: np.ndarray
    roll: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def sample_traits(identities: int, seed: int = 0) -> FaceTraits:
    """Draws the fixed traits of `identities` faces.

    Args:
        identities: K, the number of identities (1 or more).
        seed: the random seed; the same seed gives the same traits.

    Returns:
        A `FaceTraits` with K rows per field.

    Example:

    >>> traits = sample_traits(5, seed=0)
    >>> traits.identities
    5
    """
    if int(identities) < 1:
        raise ValueError(f"identities must be 1 or more, got {identities}")
    k = int(identities)
    rng = np.random.default_rng([int(seed), 101])
    u = rng.uniform

    tone = u(0, 1, k) ** 1.3
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone[:, None]
    skin = skin + rng.normal(0, 9, (k, 3)) + np.array([6.0, 0, -6.0]) * u(-1, 1, k)[:, None]
    hair = _HAIR[rng.integers(0, len(_HAIR), k)] + rng.normal(0, 12, (k, 3))
    face_ry = u(19.0, 24.0, k)
    return FaceTraits(
        face_rx=u(14.0, 19.0, k),
        face_ry=face_ry,
        jaw=u(0.0, 0.35, k),
        skin=np.clip(skin, 30, 250),
        hair=np.clip(hair, 5, 245),
        hair_volume=u(0.5, 5.0, k),
        hairline=u(0.45, 0.85, k),
        hair_part=u(-0.35, 0.35, k),
        hair_length=u(-6.0, 22.0, k),
        beard=np.where(u(0, 1, k) < 0.25, u(0.35, 0.8, k), 0.0),
        eye_y=u(-8.0, -4.0, k),
        eye_dx=u(6.5, 10.0, k),
        eye_rx=u(2.4, 3.8, k),
        eye_ry=u(1.3, 2.2, k),
        iris=np.clip(_IRIS[rng.integers(0, len(_IRIS), k)] + rng.normal(0, 10, (k, 3)), 5, 250),
        brow_gap=u(3.2, 5.5, k),
        brow_len=u(3.5, 6.0, k),
        brow_thick=u(0.7, 1.6, k),
        brow_tilt=u(-0.25, 0.25, k),
        nose_len=u(4.0, 9.0, k),
        nose_width=u(2.0, 4.0, k),
        mouth_y=u(10.0, 14.5, k),
        mouth_rx=u(4.5, 7.5, k),
        lip_thick=u(0.9, 2.2, k),
        lips=np.clip(skin * u(0.55, 0.8, k)[:, None] + np.array([40.0, 0, 0]), 10, 250),
        smile=u(-0.05, 0.12, k),
        background=u(20, 235, (k, 3)),
    )


def _soft(d: np.ndarray, aa: np.ndarray) -> np.ndarray:
    """Coverage of a shape from its signed distance `d` (negative inside), anti-aliased."""
    return np.clip(0.5 - d / aa, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry, aa):
    """Soft coverage of axis-aligned ellipses; all arguments broadcast to (n, H, W)."""
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return _soft((r - 1.0) * np.minimum(rx, ry), aa)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blends per-image `colour` (n, 3) over `img` (n, H, W, 3) in place."""
    colour = np.asarray(colour, np.float32)
    flat = np.flatnonzero(alpha)
    if flat.size > alpha.size // 4:
        img += alpha[..., None] * (colour[:, None, None, :] - img)
        return
    pixels = img.reshape(-1, 3)  # a view: img is contiguous
    a = alpha.reshape(-1)[flat, None]
    pixels[flat] += a * (colour[flat // (alpha.size // len(alpha))] - pixels[flat])


def _col(v: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1, 1) for broadcasting against (n, H, W) grids."""
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _render_block(t: FaceTraits, ids: np.ndarray, rng: np.random.Generator):
    """Renders one block of faces; returns float images and per-image geometry."""
    n = len(ids)
    u = rng.uniform
    h, w = IMAGE_SHAPE
    shift = u(-2.0, 2.0, (n, 2))
    scale = u(0.92, 1.08, n)
    roll = u(-0.08, 0.08, n)
    contrast = u(0.8, 1.2, n)
    brightness = u(-25.0, 25.0, n)
    noise = u(2.0, 7.0, n)
    openness = u(0.45, 1.15, n)
    smile = t.smile[ids] + u(-0.08, 0.1, n)
    light = u(-0.25, 0.25, n)
    tie = u(0, 1, n) < _BACKGROUND_TIE  # these images reuse the identity's background colour
    bg = np.where(tie[:, None], t.background[ids] + rng.normal(0, 12, (n, 3)), u(20, 235, (n, 3)))
    bg2 = np.clip(bg + rng.normal(0, 35, (n, 3)), 0, 255)
    shirt = u(10, 240, (n, 3))

    # Canonical (face) coordinates of every pixel: p = centre + shift + scale * R(roll) q.
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    dy = rows[None] - _col(FACE_CENTRE[0] + shift[:, 0])
    dx = cols[None] - _col(FACE_CENTRE[1] + shift[:, 1])
    c, s = _col(np.cos(roll)), _col(np.sin(roll))
    x = (c * dx + s * dy) / _col(scale)
    y = (-s * dx + c * dy) / _col(scale)
    aa = _col(1.0 / scale)

    def g(v):
        return _col(v[ids])

    # Background: two colours blended along a random direction.
    ang = u(0, 2 * np.pi, n)
    ramp = np.clip(0.5 + (_col(np.cos(ang)) * dx + _col(np.sin(ang)) * dy) / 40.0, 0, 1)
    img = bg[:, None, None, :] + ramp[..., None] * (bg2 - bg)[:, None, None, :]
    img = img.astype(np.float32)

    frx, fry = g(t.face_rx), g(t.face_ry)
    skin = t.skin[ids]
    hv = g(t.hair_volume)
    # Shirt and neck.
    _paint(img, _soft(fry * 0.88 + 0.12 * np.abs(x) - y, aa), shirt)
    _paint(img, _soft(np.maximum(np.abs(x) - frx * 0.55, fry * 0.5 - y), aa), skin * 0.8)
    # Hair behind the head (long hair falls beside the face).
    back = _ellipse(x, y, 0.0, -hv * 0.6, frx + hv, fry + hv * 0.6, aa)
    back = back * _soft(y - g(t.hair_length), aa)
    _paint(img, back, t.hair[ids] * 0.85)
    # Ears, then the face: an ellipse whose lower half narrows towards the jaw.
    ey, edx = g(t.eye_y), g(t.eye_dx)
    for side in (-1.0, 1.0):
        _paint(img, _ellipse(x, y, side * frx * 0.97, ey + 2.0, 2.4, 4.0, aa), skin * 0.88)
    narrow = 1.0 - g(t.jaw) * np.clip(y / fry, 0, 1) ** 2
    face = _ellipse(x / narrow, y, 0.0, 0.0, frx, fry, aa)
    shade = 1.0 + _col(light) * np.clip(x / frx, -1, 1) - 0.12 * np.clip(y / fry, 0, 1) ** 2
    skin_img = skin[:, None, None, :] * shade[..., None]
    img *= 1.0 - face[..., None]
    img += face[..., None] * skin_img
    # Beard on the lower face.
    beard = face * g(t.beard) * _soft(g(t.mouth_y) - 3.0 - y, aa)
    _paint(img, beard, t.hair[ids] * 0.8)
    # Front hair: inside the hair outline and above a (parted) hairline.
    line = -fry * g(t.hairline) + g(t.hair_part) * x + 1.5 * np.cos(x * 0.9) * (hv > 2.5)
    top = _ellipse(x, y, 0.0, -hv * 0.5, frx + hv, fry + hv * 0.5, aa) * _soft(y - line, aa)
    _paint(img, top, t.hair[ids])
    # Brows.
    for side in (-1.0, 1.0):
        bx = x - side * edx
        by = y - (ey - g(t.brow_gap)) - side * g(t.brow_tilt) * bx + 0.08 * bx ** 2
        d = np.maximum(np.abs(by) - g(t.brow_thick), np.abs(bx) - g(t.brow_len))
        _paint(img, _soft(d, aa), t.hair[ids] * 0.6 + 10.0)
    # Eyes: sclera, iris and pupil clipped to the sclera, a darker upper lid.
    erx, ery = g(t.eye_rx), g(t.eye_ry) * _col(openness)
    for side in (-1.0, 1.0):
        cx = side * edx
        lid = _ellipse(x, y, cx, ey, erx + 0.7, ery + 0.7, aa) * _soft(y - ey, aa)
        _paint(img, lid, skin * 0.45)
        sclera = _ellipse(x, y, cx, ey, erx, ery, aa)
        _paint(img, sclera, np.full((n, 3), 232.0))
        iris = _ellipse(x, y, cx, ey, erx * 0.5, erx * 0.5, aa) * sclera
        _paint(img, iris, t.iris[ids])
        pupil = _ellipse(x, y, cx, ey, erx * 0.22, erx * 0.22, aa) * sclera
        _paint(img, pupil, np.full((n, 3), 12.0))
    # Nose: a shaded ridge and two nostrils.
    nl, nw = g(t.nose_len), g(t.nose_width)
    ridge = _ellipse(x, y, nw * 0.35, nl * 0.45, 0.9, nl * 0.55 + 0.5, aa) * 0.35
    _paint(img, ridge, skin * 0.7)
    for side in (-1.0, 1.0):
        _paint(img, _ellipse(x, y, side * nw * 0.5, nl, 0.9, 0.6, aa) * 0.8, skin * 0.35)
    # Mouth: lips along a curve whose depth is the smile, and a dark parting line.
    my, mrx, lt = g(t.mouth_y), g(t.mouth_rx), g(t.lip_thick)
    uu = np.clip(x / mrx, -1.0, 1.0)
    curve = my + _col(smile) * mrx * (1.0 - uu ** 2)
    half = lt * np.sqrt(np.clip(1.0 - (x / mrx) ** 2, 0.0, 1.0))
    _paint(img, _soft(np.maximum(np.abs(y - curve) - half, np.abs(x) - mrx), aa), t.lips[ids])
    parting = np.maximum(np.abs(y - curve) - 0.35, np.abs(x) - mrx * 0.85)
    _paint(img, _soft(parting, aa), t.lips[ids] * 0.4)

    # Lighting, contrast, noise.
    mean = img.mean(axis=(1, 2, 3), keepdims=True)
    img = (img - mean) * _col(contrast)[..., None] + mean + _col(brightness)[..., None]
    img += rng.normal(0.0, 1.0, img.shape).astype(np.float32) * _col(noise)[..., None]
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # Eye centres in image coordinates (forward transform of the canonical centres).
    eyes = np.empty((n, 2, 2), np.float32)
    sin, cos = np.sin(roll), np.cos(roll)
    for k, side in enumerate((-1.0, 1.0)):
        qx, qy = side * t.eye_dx[ids], t.eye_y[ids]
        eyes[:, k, 0] = FACE_CENTRE[0] + shift[:, 0] + scale * (sin * qx + cos * qy)
        eyes[:, k, 1] = FACE_CENTRE[1] + shift[:, 1] + scale * (cos * qx - sin * qy)
    eye_size = (t.eye_rx[ids] * scale).astype(np.float32)
    return images, eyes, eye_size, roll.astype(np.float32)


def render_faces(traits: FaceTraits, identity: np.ndarray, seed: int = 0) -> FaceBatch:
    """Renders one varied image per entry of `identity`.

    Each image jitters its identity's fixed traits: +-2 px shift, roll
    +-0.08 rad, scale 0.92-1.08, contrast 0.8-1.2, brightness +-25, Gaussian
    noise sigma 2-7, eye openness and mouth curve; half the images reuse the
    identity's background colour, the others get a random one.

    Args:
        traits: the identities, from `sample_traits`.
        identity: (N,) integer identities in [0, K).
        seed: the random seed of the variations; same inputs, same bytes.

    Returns:
        A `FaceBatch` with the images and their eye positions.

    Example:

    >>> import numpy as np
    >>> batch = render_faces(sample_traits(3), np.array([0, 1, 2, 2]), seed=1)
    >>> batch.images.shape, batch.eyes.shape
    ((4, 55, 47, 3), (4, 2, 2))
    """
    identity = np.asarray(identity, dtype=np.int64).reshape(-1)
    if identity.size and (identity.min() < 0 or identity.max() >= traits.identities):
        raise ValueError(
            f"identity values must lie in [0, {traits.identities}), found "
            f"[{identity.min()}, {identity.max()}]"
        )
    rng = np.random.default_rng([int(seed), 202])
    parts = [_render_block(traits, identity[i:i + _BLOCK], rng)
             for i in range(0, len(identity), _BLOCK)]
    if not parts:
        h, w = IMAGE_SHAPE
        empty = np.zeros((0,), np.float32)
        return FaceBatch(np.zeros((0, h, w, 3), np.uint8), identity,
                         np.zeros((0, 2, 2), np.float32), empty, empty)
    images, eyes, eye_size, roll = (np.concatenate(p) for p in zip(*parts))
    return FaceBatch(images, identity, eyes, eye_size, roll)
