"""The lab's HDF5 layout (`data` as (N, 3, H, W), `label`) and image folders, checked.

Every problem with an input file raises `DataError` (a `ValueError`) whose
message names the file, the field, what was found and what was expected.
Pixels are always returned channels-last, float32, raw 0..255 as stored.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard._fs.paths import path_problem

#: Suffixes `load_images` reads (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Suffixes `load_inputs` sends to `load_lab_h5`.
H5_SUFFIXES = (".h5", ".hdf5")

_LABEL_CHUNK = 1 << 16
#: Share of the memory available that reading a whole file into memory may take. The images
#: are not all a run holds (TensorFlow, the model, the sweep's activations: 4,800 bytes per
#: image on DeepID, batch copies), so a file needing more than this is refused with the
#: `--stream` hint; a 12.4 GB declaration peaked at 15.7 GB of memory when it was read.
MEMORY_FRACTION = 0.4
# Pillow modes holding 8-bit samples; 16-bit and float images would be clipped by convert().
_EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


class DataError(ValueError):
    """An input file (or folder) is missing, unreadable or not what the model needs.

    Attributes:
        path: the offending file or folder, as a string (or `None`).
        field: the HDF5 dataset or image concerned (or `None`).

    Example:

    >>> try:
    ...     load_lab_h5("missing.h5")
    ... except DataError as err:
    ...     print(err.path, err.field)
    missing.h5 None
    """

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None):
        super().__init__(message)
        self.path = path
        self.field = field


def _fail(path, field: str | None, found: str, expected: str) -> DataError:
    where = f"{path}" if field is None else f"{path}: field `{field}`"
    return DataError(
        f"{where}: found {found}; expected {expected}.",
        path=str(path),
        field=field,
    )


def _check_args(image_shape, num_classes) -> tuple[tuple[int, int, int] | None, int | None]:
    if image_shape is not None:
        shape = tuple(image_shape)
        if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise ValueError(
                f"image_shape must be (height, width, channels) with positive ints. "
                f"Received: image_shape={image_shape!r}"
            )
        image_shape = tuple(int(d) for d in shape)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise ValueError(f"num_classes must be a positive int. Received: {num_classes!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive int. Received: {num_classes!r}")
        num_classes = int(num_classes)
    return image_shape, num_classes


def _existing_file(path) -> Path:
    p = Path(os.fspath(path))
    problem = path_problem(p)
    if problem is not None:  # "no such file", or a symlink loop, a broken symlink...
        raise _fail(p, None, problem, "an existing HDF5 file in the lab layout")
    if not p.is_file():
        raise _fail(p, None, "a folder", "an HDF5 file in the lab layout")
    return p


def _open_h5(p: Path) -> h5py.File:
    try:
        return h5py.File(p, "r")
    except (OSError, ValueError) as err:
        raise _fail(
            p, None, f"a file h5py cannot open ({err})", "a readable HDF5 file (not corrupted)"
        ) from err


def _dataset(p: Path, f: h5py.File, field: str) -> h5py.Dataset:
    if field not in f:
        raise _fail(p, field, f"no such dataset (the file holds {sorted(f.keys())})",
                    f"a dataset named `{field}`")
    ds = f[field]
    if not isinstance(ds, h5py.Dataset):
        raise _fail(p, field, f"a {type(ds).__name__}", "a dataset")
    return ds


def check_labels(
    path, values: np.ndarray, *, offset: int = 0, num_classes: int | None = None,
    field: str | None = "label",
) -> np.ndarray:
    """Checks class labels and returns them as int64.

    Args:
        path: file the labels come from (for messages).
        values: the labels (any numeric dtype; floats must hold whole numbers).
        offset: index of `values[0]` in the file, so messages give file indices.
        num_classes: when given, labels must be in [0, num_classes).
        field: dataset name for messages (`None`: labels given as an array, not
            a file). Defaults to "label".

    Returns:
        The labels as an int64 array.

    Raises:
        DataError: a label is not an integer, negative, or >= `num_classes`;
            the message gives the first bad index and its value.

    Example:

    >>> import numpy as np
    >>> check_labels("x.h5", np.array([0.0, 2.0]), num_classes=3)
    array([0, 2])
    """
    values = np.asarray(values)
    kind = values.dtype.kind
    if kind not in "iuf":
        raise _fail(path, field, f"dtype {values.dtype}", "integer class labels")
    if kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            i = int(np.argmax(bad))
            found = f"{values[i].item()} at index {offset + i} (dtype {values.dtype})"
            raise _fail(path, field, found, "integer class labels")
    if values.size:
        if (values < 0).any():
            i = int(np.argmax(values < 0))
            raise _fail(path, field, f"{values[i].item()} at index {offset + i}",
                        "class labels >= 0")
        upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
        too_big = values >= upper
        if too_big.any():
            i = int(np.argmax(too_big))
            raise _fail(path, field, f"{values[i].item()} at index {offset + i}",
                        f"class labels in [0, {upper})")
    return values.astype("int64")


def check_pixels(path, x: np.ndarray, *, offset: int = 0, field: str = "data") -> None:
    """Checks that every pixel is finite and within 0..255.

    Args:
        path: file the pixels come from (for messages).
        x: images (N, ...), any numeric dtype.
        offset: index of `x[0]` in the file, so messages give file indices.
        field: dataset name for messages. Defaults to "data".

    Raises:
        DataError: naming the first image holding NaN/inf or a value outside 0..255.

    Example:

    >>> import numpy as np
    >>> check_pixels("x.h5", np.zeros((2, 4, 4, 3)))  # fine: returns None
    >>> check_pixels("x.h5", np.full((2, 4, 4, 3), 300.0))
    Traceback (most recent call last):
        ...
    keras_prune_guard.data.files.DataError: x.h5: field `data`: found pixel values 300.0..300.0
    in image 0; expected raw pixel values within 0..255.
    """
    x = np.asarray(x)
    if x.size == 0:
        return
    if x.dtype.kind == "f":
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            bad = x[i][~np.isfinite(x[i])].flat[0]
            raise _fail(path, field, f"{bad} in image {offset + i}",
                        "finite pixel values (no NaN/inf)")
    if x.dtype.kind in "iuf":
        outside = ((x < 0) | (x > 255)).reshape(len(x), -1).any(axis=1)
        if outside.any():
            i = int(np.argmax(outside))
            lo, hi = x[i].min(), x[i].max()
            raise _fail(path, field, f"pixel values {lo}..{hi} in image {offset + i}",
                        "raw pixel values within 0..255")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation, or `None` when the system does not say.

    Reads `MemAvailable` from /proc/meminfo (Linux: free memory plus what the kernel can
    reclaim); elsewhere the free physical pages from `os.sysconf`.

    Example:

    >>> available_memory() > 0
    True
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def check_memory(path, count: int, image_shape: tuple[int, int, int],
                 available: int | None = None) -> int:
    """Refuses to read `count` images into memory when they would take too much of it.

    Args:
        path: the file (for messages).
        count: images declared.
        image_shape: (H, W, C) of each.
        available: bytes available. Defaults to `available_memory()`.

    Returns:
        The bytes reading the file takes (float32 images and int64 labels).

    Raises:
        DataError: they exceed `MEMORY_FRACTION` of the memory available; the message
            gives both figures and the `--stream` hint.

    Example:

    >>> check_memory("big.h5", 400_000, (55, 47, 3), available=16e9)
    Traceback (most recent call last):
        ...
    keras_prune_guard.data.files.DataError: big.h5: field `data`: found 400,000 images of
    (55, 47, 3), 12.4 GB as float32 ...
    """
    needed = int(count) * (int(np.prod(image_shape)) * 4 + 8)
    available = available_memory() if available is None else int(available)
    if available is not None and needed > MEMORY_FRACTION * available:
        raise _fail(path, "data", f"{count:,} images of {tuple(image_shape)}, "
                    f"{_gb(needed)} as float32 in memory, with {_gb(available)} available",
                    f"at most {MEMORY_FRACTION:.0%} of the memory available "
                    f"({_gb(MEMORY_FRACTION * available)}): read it in batches with --stream "
                    "(API: lab_h5_dataset), or use a smaller file")
    return needed


def _check_storage(p: Path, ds: h5py.Dataset, field: str) -> None:
    """Refuses a dataset declaring more rows than the file stores.

    HDF5 reads never-written parts of a dataset as its fill value (zeros), so a 3 MB
    file can declare 400,000 images. A contiguous dataset must store all its bytes; a
    chunked one (maybe compressed) every chunk.
    """
    declared = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    if declared == 0:
        return
    if ds.chunks is None:
        stored, complete = int(ds.id.get_storage_size()), declared
        what = f"{stored:,} bytes stored of the {declared:,} declared"
    else:
        grid = [-(-size // chunk) for size, chunk in zip(ds.shape, ds.chunks)]
        stored, complete = int(ds.id.get_num_chunks()), int(np.prod(grid, dtype=np.int64))
        what = f"{stored:,} chunks stored of the {complete:,} declared"
    if stored < complete:
        raise _fail(p, field, f"shape {ds.shape} but {what} (the rest was never written; "
                    "HDF5 would read it as zeros)", "a file that holds every row it declares")


def h5_info(
    path: str | os.PathLike,
    *,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    labels: bool = True,
    in_memory: bool = False,
) -> dict:
    """Checks a lab HDF5 file cheaply (pixels are not read) and describes it.

    Besides shapes and labels it checks that the file stores every row it declares
    (HDF5 fills unwritten rows with zeros) and, with `in_memory`, that the images fit
    in memory (`check_memory`).

    Args:
        path: the `.h5` file, `data` (N, C, H, W) with C 3 or 1, `label` (N,).
        image_shape: when given, the (H, W, C) the images must have.
        num_classes: when given, labels must be in [0, num_classes).
        labels: require and check `label`. Defaults to `True`.
        in_memory: the caller reads the whole file into memory. Defaults to `False`.

    Returns:
        {"path", "count", "image_shape" (H, W, C), "data_dtype", "label_dtype",
        "label_range" (min, max), "fields"}; the label entries are `None`
        when `labels=False`.

    Raises:
        DataError: missing/unreadable file, missing dataset, wrong rank, size or
            channels, mismatched lengths, no images, bad labels, rows declared but not
            stored, too large for memory (`in_memory`).

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> path = f"{tempfile.mkdtemp()}/clean_faces.h5"
    >>> write_lab_h5(path, np.zeros((120, 55, 47, 3), "uint8"), np.arange(120) % 10)
    >>> info = h5_info(path, image_shape=(55, 47, 3))
    >>> info["count"], info["label_range"]
    (120, (0, 9))
    """
    image_shape, num_classes = _check_args(image_shape, num_classes)
    p = _existing_file(path)
    with _open_h5(p) as f:
        data = _dataset(p, f, "data")
        if data.ndim != 4:
            raise _fail(p, "data", f"shape {data.shape} (rank {data.ndim})",
                        "rank 4 (N, C, H, W) with C = 3 or 1")
        if data.shape[1] not in (1, 3):
            hint = " (this looks channels-last; the lab stores (N, C, H, W))" \
                if data.shape[-1] in (1, 3) else ""
            raise _fail(p, "data", f"shape {data.shape}, {data.shape[1]} channels on axis 1{hint}",
                        "(N, C, H, W) with C = 3 or 1")
        if data.dtype.kind not in "iuf":
            raise _fail(p, "data", f"dtype {data.dtype}", "numeric pixels (uint8 or float)")
        count = int(data.shape[0])
        shape = (int(data.shape[2]), int(data.shape[3]), int(data.shape[1]))
        if count == 0:
            raise _fail(p, "data", f"0 images (shape {data.shape})", "at least one image")
        if 0 in shape:
            raise _fail(p, "data", f"empty images (shape {data.shape})",
                        "images at least 1 pixel high and wide")
        if image_shape is not None and shape != image_shape:
            raise _fail(p, "data", f"images of (H, W, C) {shape}",
                        f"{image_shape}, the model's input")
        if in_memory:
            check_memory(p, count, shape)
        _check_storage(p, data, "data")
        info = {
            "path": str(p),
            "count": count,
            "image_shape": shape,
            "data_dtype": str(data.dtype),
            "label_dtype": None,
            "label_range": None,
            "fields": sorted(f.keys()),
        }
        if labels:
            label = _label_dataset(p, f, count)
            _check_storage(p, label, "label")
            lo, hi = None, None
            for start in range(0, count, _LABEL_CHUNK):
                y = check_labels(p, _read(p, label, start, start + _LABEL_CHUNK, "label"),
                                 offset=start, num_classes=num_classes)
                lo = int(y.min()) if lo is None else min(lo, int(y.min()))
                hi = int(y.max()) if hi is None else max(hi, int(y.max()))
            info["label_dtype"] = str(label.dtype)
            info["label_range"] = (lo, hi)
    return info


def _label_dataset(p: Path, f: h5py.File, count: int) -> h5py.Dataset:
    label = _dataset(p, f, "label")
    if label.ndim == 0 or label.ndim > 2 or (label.ndim == 2 and label.shape[1] != 1):
        raise _fail(p, "label", f"shape {label.shape}", f"({count},), one label per image")
    if label.shape[0] != count:
        raise _fail(p, "label", f"{label.shape[0]} labels for {count} images in `data`",
                    "one label per image (equal lengths)")
    if label.dtype.kind not in "iuf":
        raise _fail(p, "label", f"dtype {label.dtype}", "integer class labels")
    return label


def _read(p: Path, ds: h5py.Dataset, start: int, stop: int, field: str) -> np.ndarray:
    try:
        values = ds[start:stop]
    except (OSError, ValueError, TypeError) as err:
        raise _fail(p, field, f"rows {start}..{stop - 1} unreadable ({err})",
                    "a readable dataset (file not corrupted)") from err
    return values.reshape(len(values)) if field == "label" else values


def iter_lab_h5(
    path: str | os.PathLike,
    batch_size: int = 1024,
    *,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    labels: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Reads a lab HDF5 file batch by batch, checking every batch.

    The file is checked with `h5_info` first; then each batch's pixels are
    checked for NaN/inf and values outside 0..255, and its labels again.

    Args:
        path: the `.h5` file (`data` (N, C, H, W), `label` (N,)).
        batch_size: images per batch. Defaults to 1024.
        image_shape: when given, the (H, W, C) the images must have.
        num_classes: when given, labels must be in [0, num_classes).
        labels: read `label`; with `False` it may be absent and y is `None`.

    Yields:
        `(x, y)`: x float32 (n, H, W, C) raw pixels as stored, y int64 (n,).

    Raises:
        DataError: any problem listed in `h5_info`, or bad pixels (the message
            names field `data` and the first bad image's index).

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> path = f"{tempfile.mkdtemp()}/valid.h5"
    >>> write_lab_h5(path, np.zeros((5, 55, 47, 3), "uint8"), np.arange(5))
    >>> for x, y in iter_lab_h5(path, 2, image_shape=(55, 47, 3)):
    ...     print(x.shape, y.tolist())
    (2, 55, 47, 3) [0, 1]
    (2, 55, 47, 3) [2, 3]
    (1, 55, 47, 3) [4]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    info = h5_info(path, image_shape=image_shape, num_classes=num_classes, labels=labels)
    p = Path(info["path"])
    count = info["count"]
    with _open_h5(p) as f:
        data = f["data"]
        label = _label_dataset(p, f, count) if labels else None
        for start in range(0, count, int(batch_size)):
            stop = min(start + int(batch_size), count)
            x = _read(p, data, start, stop, "data")
            check_pixels(p, x, offset=start)
            x = x.astype("float32").transpose(0, 2, 3, 1)
            y = None
            if label is not None:
                y = check_labels(p, _read(p, label, start, stop, "label"),
                                 offset=start, num_classes=num_classes)
            yield x, y


def load_lab_h5(
    path: str | os.PathLike,
    *,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole lab HDF5 file (through `iter_lab_h5`, so fully checked).

    Args:
        path: the `.h5` file.
        image_shape: when given, the (H, W, C) the images must have.
        num_classes: when given, labels must be in [0, num_classes).

    Returns:
        `(x, y)`: float32 (N, H, W, C) raw pixels and int64 (N,) labels.

    Raises:
        DataError: see `h5_info` and `iter_lab_h5`; a file whose images would take more
            than `MEMORY_FRACTION` of the memory available is refused before any is read,
            with the `--stream` hint.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> path = f"{tempfile.mkdtemp()}/clean_faces.h5"
    >>> write_lab_h5(path, np.full((3, 55, 47, 3), 7, "uint8"), np.array([4, 0, 2]))
    >>> x, y = load_lab_h5(path, image_shape=(55, 47, 3), num_classes=1283)
    >>> x.shape, x.dtype, float(x.max()), y
    ((3, 55, 47, 3), dtype('float32'), 7.0, array([4, 0, 2]))
    """
    info = h5_info(path, image_shape=image_shape, num_classes=num_classes, in_memory=True)
    x_all = np.empty((info["count"], *info["image_shape"]), dtype="float32")  # no concat copy
    y_all = np.empty((info["count"],), dtype="int64")
    start = 0
    for x, y in iter_lab_h5(path, image_shape=image_shape, num_classes=num_classes):
        x_all[start:start + len(x)] = x
        y_all[start:start + len(x)] = y
        start += len(x)
    return x_all, y_all


def lab_h5_dataset(
    path: str | os.PathLike,
    batch_size: int = 1024,
    *,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    labels: bool = True,
):
    """A `tf.data.Dataset` reading a lab HDF5 file in batches (through `iter_lab_h5`).

    Nothing but the batch being read is in memory; every batch is checked as
    `iter_lab_h5` checks it. The file itself is checked (`h5_info`) right away,
    so a missing or malformed file fails here, not at the first batch. The
    dataset can be iterated several times (each pass reopens the file) and
    knows its number of batches.

    Args:
        path: the `.h5` file (`data` (N, C, H, W), `label` (N,)).
        batch_size: images per batch. Defaults to 1024.
        image_shape: when given, the (H, W, C) the images must have.
        num_classes: when given, labels must be in [0, num_classes).
        labels: yield `(x, y)`; with `False` only `x` (`label` may be absent).

    Returns:
        A dataset of `(x, y)` batches: x float32 (n, H, W, C) raw pixels, y int64 (n,).

    Raises:
        DataError: see `h5_info` (bad pixels or labels found while reading
            surface from TensorFlow as an error whose message holds the
            `DataError` text, naming the file, field and image).

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> path = f"{tempfile.mkdtemp()}/valid.h5"
    >>> write_lab_h5(path, np.zeros((5, 55, 47, 3), "uint8"), np.arange(5))
    >>> valid = lab_h5_dataset(path, 2, image_shape=(55, 47, 3), num_classes=1283)
    >>> [len(y) for x, y in valid]  # e.g. sweep(masked, valid): never all in memory
    [2, 2, 1]
    """

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    info = h5_info(path, image_shape=image_shape, num_classes=num_classes, labels=labels)
    path, batch_size = info["path"], int(batch_size)
    x_spec = tf.TensorSpec((None, *info["image_shape"]), tf.float32)

    def generate():
        for x, y in iter_lab_h5(path, batch_size, image_shape=image_shape,
                                num_classes=num_classes, labels=labels):
            yield (x, y) if labels else x

    signature = (x_spec, tf.TensorSpec((None,), tf.int64)) if labels else x_spec
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(
        -(-info["count"] // batch_size)))
    return dataset.prefetch(1)


def _image_files(p: Path) -> list[Path]:
    problem = path_problem(p)
    if problem is not None:
        raise _fail(p, None, "no such file or folder" if problem == "no such file" else problem,
                    f"an image file or a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    if p.is_file():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise _fail(p, None, f"suffix '{p.suffix}'",
                        f"an image ({', '.join(IMAGE_SUFFIXES)}) or an HDF5 file (.h5, .hdf5)")
        return [p]
    files = sorted(
        q for q in p.iterdir()
        if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".")
    )
    if not files:
        others = sum(1 for _ in p.iterdir())
        raise _fail(p, None, f"an empty folder (no images among its {others} entries)",
                    f"at least one image file ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _read_image(q: Path, channels: int, size: tuple[int, int] | None = None,
                source: str = "the model's input") -> np.ndarray:
    """Decodes one image, after checking its size from the header (Pillow reads it lazily).

    Args:
        q: the image file.
        channels: 3 (RGB) or 1 (grey).
        size: the (H, W) it must have, checked before decoding. Defaults to `None`.
        source: where `size` comes from, for the message. Defaults to the model's input.
    """


    try:
        with warnings.catch_warnings():  # the size is checked below, before any decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(q)
        with im:
            width, height = im.size
            if size is not None and (height, width) != tuple(size):
                raise _fail(q, None, f"an image of (H, W, C) {(height, width, channels)} in "
                            "its header (not decoded)",
                            f"{(*size, channels)}, as {source} (images are not resized)")
            limit = Image.MAX_IMAGE_PIXELS
            if limit and width * height > limit:
                raise _fail(q, None, f"an image of {width} x {height} pixels (W x H; "
                            f"{width * height:,} pixels, read from the file's header)",
                            f"at most Pillow's Image.MAX_IMAGE_PIXELS = {limit:,} pixels "
                            "(a decompression-bomb guard; the image was not decoded)")
            im.load()
            if im.mode not in _EIGHT_BIT_MODES:
                raise _fail(q, None, f"Pillow image mode '{im.mode}' (16-bit or float)",
                            "an 8-bit RGB, RGBA, palette or grey image")
            if "transparency" in im.info and im.mode in ("P", "L"):
                im = im.convert("RGBA")
            im = im.convert("RGB" if channels == 3 else "L")
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise _fail(q, None, f"an image too large to decode ({err})",
                    "an image of the model's size (the image was not decoded)") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise _fail(q, None, f"an unreadable image ({err})", "a valid PNG or JPEG file") from err
    x = np.asarray(im, dtype="float32")
    return x if channels == 3 else x[..., None]


def load_images(
    path: str | os.PathLike,
    *,
    image_shape: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Reads one PNG/JPEG image or a folder of them (sorted by name), via Pillow.

    RGBA, palette and grey images are converted to RGB (or to grey when
    `image_shape` has 1 channel). Images are never resized: a size different
    from `image_shape` (or, without it, from the first image) is an error,
    found from the file's header before the image is decoded (so a huge PNG
    costs no memory); images above Pillow's `Image.MAX_IMAGE_PIXELS` are
    refused the same way.

    Args:
        path: an image file or a folder (not searched recursively; dotfiles skipped).
        image_shape: when given, the (H, W, C) every image must have (C 3 or 1).

    Returns:
        `(x, names)`: float32 (N, H, W, C) raw 0..255 pixels and the file names.

    Raises:
        DataError: missing path, empty folder, unreadable image, wrong size.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> Image.fromarray(np.zeros((55, 47, 4), "uint8"), "RGBA").save(f"{folder}/face.png")
    >>> x, names = load_images(folder, image_shape=(55, 47, 3))
    >>> x.shape, names
    ((1, 55, 47, 3), ['face.png'])
    """
    image_shape, _ = _check_args(image_shape, None)
    if image_shape is not None and image_shape[2] not in (1, 3):
        raise ValueError(
            f"image_shape must have 3 (RGB) or 1 (grey) channels for images. "
            f"Received: image_shape={image_shape}"
        )
    files = _image_files(Path(os.fspath(path)))
    channels = 3 if image_shape is None else image_shape[2]
    out = None
    size = None if image_shape is None else image_shape[:2]
    source = "the model's input" if image_shape else f"the first image {files[0].name}"
    for i, q in enumerate(files):
        x = _read_image(q, channels, size, source)  # its size checked before decoding
        size = size or x.shape[:2]
        if out is None:
            want = image_shape or x.shape
            out = np.empty((len(files), *want), dtype="float32")
        if x.shape != out.shape[1:]:
            raise _fail(q, None, f"an image of (H, W, C) {x.shape}",
                        f"{out.shape[1:]}, as {source} (images are not resized)")
        out[i] = x
    return out, [q.name for q in files]


def load_inputs(
    path: str | os.PathLike,
    *,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads a lab `.h5`/`.hdf5` file, an image, or a folder of images.

    Args:
        path: `.h5`/`.hdf5` goes to `load_lab_h5`, anything else to `load_images`.
        image_shape: when given, the (H, W, C) the images must have.
        num_classes: label range check for HDF5 files (unused for images).

    Returns:
        `(x, y)`: float32 (N, H, W, C) raw pixels; int64 labels, or `None` for images.

    Raises:
        DataError: see `load_lab_h5` and `load_images`.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> Image.fromarray(np.zeros((55, 47, 3), "uint8")).save(f"{folder}/face.png")
    >>> x, y = load_inputs(folder, image_shape=(55, 47, 3))
    >>> x.shape, y
    ((1, 55, 47, 3), None)
    """
    if Path(os.fspath(path)).suffix.lower() in H5_SUFFIXES:
        return load_lab_h5(path, image_shape=image_shape, num_classes=num_classes)
    x, _ = load_images(path, image_shape=image_shape)
    return x, None


def load_true_labels(path: str | os.PathLike) -> np.ndarray | None:
    """The `true_label` dataset of a poisoned lab HDF5 file (the images' real classes), if any.

    Returns:
        int64 (N,) labels, or `None` when the file has no `true_label` (the lab's own
        files), so robust accuracy cannot be measured.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> path, images = f"{tempfile.mkdtemp()}/bd_test.h5", np.zeros((3, 55, 47, 3), "uint8")
    >>> write_lab_h5(path, images, np.zeros(3), true_label=np.array([5, 1, 2]))
    >>> load_true_labels(path)
    array([5, 1, 2])
    """
    p = _existing_file(path)
    with _open_h5(p) as f:
        if "true_label" not in f:
            return None
        return np.asarray(f["true_label"][()]).reshape(-1).astype("int64")


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

    >>> import tempfile
    >>> import h5py
    >>> import numpy as np
    >>> path = f"{tempfile.mkdtemp()}/valid.h5"
    >>> write_lab_h5(path, np.zeros((2, 55, 47, 3), "uint8"), np.array([0, 1]))
    >>> with h5py.File(path) as f:
    ...     print(f["data"].shape)  # the lab's (N, C, H, W)
    (2, 3, 55, 47)
    """
    images = np.asarray(images)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=np.clip(images, 0, 255).astype("uint8").transpose(0, 3, 1, 2))
        f.create_dataset("label", data=np.asarray(labels, dtype="int64"))
        for name, values in extra.items():
            f.create_dataset(name, data=np.asarray(values))


__all__ = [
    "H5_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MEMORY_FRACTION",
    "DataError",
    "available_memory",
    "check_memory",
    "check_labels",
    "check_pixels",
    "h5_info",
    "iter_lab_h5",
    "lab_h5_dataset",
    "load_images",
    "load_inputs",
    "load_lab_h5",
    "load_true_labels",
    "write_lab_h5",
]
