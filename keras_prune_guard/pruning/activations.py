"""The activation cache: what enters the mask, for every image, in RAM or in a file.

The sweep keeps only these activations (for the lab's DeepID, pool_3 is
5 x 4 x 60 float32: 4,800 bytes per image), never the images. With
`cache_dir` they go to a file in that folder instead of RAM, read back through
short-lived `np.memmap` views (so the pages read do not stay in the process's
memory) and removed when the cache is closed. While collecting, each batch
also adds to the per-channel sums (float64) and to the "channel is non-zero
somewhere in this image" table the sweep needs.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_prune_guard.data.checks import is_streamed
from keras_prune_guard.data.distribute import compiled_forward, map_batches


class MappedArray:
    """A read-only float32 array in a file; each read maps the file, copies, unmaps.

    Supports `len`, `shape`, `ndim`, `dtype`, `nbytes` and `[...]` reads (slices
    or integer arrays along the first axis), which return ordinary arrays.

    Args:
        path: the raw float32 file (C order).
        shape: its full shape.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> path = f"{tempfile.mkdtemp()}/acts.f32"
    >>> np.arange(10 * 5 * 4 * 60, dtype="float32").tofile(path)
    >>> rows = MappedArray(path, (10, 5, 4, 60))
    >>> rows[np.array([3, 7])].shape, float(rows[1][0, 0, 0])
    ((2, 5, 4, 60), 1200.0)
    """

    dtype = np.dtype("float32")

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...]):
        self.path = str(path)
        self.shape = tuple(int(d) for d in shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, key) -> np.ndarray:
        view = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        try:
            return np.array(view[key])
        finally:
            del view


class ActivationCache:
    """Collects batches of activations in order, in RAM or in a file under `cache_dir`.

    Args:
        cache_dir: `None` keeps them in RAM; a folder (created if needed) keeps
            them in a temporary file there, deleted by `close`. Defaults to `None`.
        count: the number of rows, when known: RAM rows are then written in
            place (no concatenation copy). Defaults to `None`.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> with ActivationCache(tempfile.mkdtemp()) as cache:  # a folder: a file there, not RAM
    ...     for batch in (np.ones((3, 5, 4, 60)), np.zeros((2, 5, 4, 60))):
    ...         cache.append(batch)
    ...     rows = cache.finish()
    ...     print(type(rows).__name__, rows.shape, rows[2:4, 0, 0, 0])
    MappedArray (5, 5, 4, 60) [1. 0.]
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, count: int | None = None):
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.count = count
        self.rows = 0
        self.row_shape: tuple[int, ...] | None = None
        self.path: Path | None = None
        self._file = None
        self._parts: list[np.ndarray] = []
        self._array: np.ndarray | None = None
        if self.cache_dir is not None:
            if self.cache_dir.exists() and not self.cache_dir.is_dir():
                raise ValueError(
                    f"cache_dir {self.cache_dir} is a file; expected a folder for the "
                    "activation cache file"
                )
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(
                dir=self.cache_dir, prefix="kpg-activations-", suffix=".f32", delete=False
            )
            self._file, self.path = handle, Path(handle.name)

    def append(self, batch: np.ndarray) -> None:
        """Adds a batch of rows (float32) after the ones already there."""
        batch = np.ascontiguousarray(batch, dtype="float32")
        if self.row_shape is None:
            self.row_shape = batch.shape[1:]
        elif batch.shape[1:] != self.row_shape:
            raise ValueError(
                f"Activation batches differ in shape: {batch.shape[1:]} after {self.row_shape}."
            )
        if self._file is not None:
            batch.tofile(self._file)
        elif self.count is not None:
            if self._array is None:
                self._array = np.empty((self.count, *self.row_shape), dtype="float32")
            if self.rows + len(batch) > self.count:
                raise ValueError(
                    f"More activation rows than announced: {self.rows + len(batch)} > "
                    f"count={self.count}."
                )
            self._array[self.rows : self.rows + len(batch)] = batch
        else:
            self._parts.append(batch)
        self.rows += len(batch)

    def finish(self) -> np.ndarray | MappedArray:
        """Returns every row: an array in RAM, or a `MappedArray` on the file."""
        if self.row_shape is None:
            raise ValueError("The validation data is empty: expected at least one image.")
        shape = (self.rows, *self.row_shape)
        if self._file is not None:
            self._file.close()
            return MappedArray(self.path, shape)
        if self._array is not None:
            return self._array[: self.rows]
        out = np.empty(shape, dtype="float32")  # pages are touched as parts are freed
        start = 0
        while self._parts:
            part = self._parts.pop(0)
            out[start : start + len(part)] = part
            start += len(part)
        return out

    def close(self) -> None:
        """Deletes the cache file (if any)."""
        if self._file is not None:
            self._file.close()
            if self.path is not None and self.path.exists():
                self.path.unlink()
        self._parts, self._array = [], None

    def __enter__(self) -> ActivationCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Activations:
    """What one pass of the head leaves: the cached rows, labels and per-channel statistics.

    `values` is (N, ..., C); `sums` the float64 sum of each channel over images
    and positions; `positions` how many (image, position) pairs were summed;
    `touched[i, c]` is True when channel c is non-zero somewhere in image i.
    Call `close()` (or use it as a context manager) to delete a cache file.
    """

    values: np.ndarray | MappedArray
    labels: np.ndarray | None
    sums: np.ndarray
    positions: int
    touched: np.ndarray
    cache: ActivationCache | None = field(default=None, repr=False)

    @property
    def means(self) -> np.ndarray:
        """Mean of each channel, float64."""
        return self.sums / self.positions

    @property
    def bytes_per_image(self) -> int:
        """Bytes one image's cached activations take."""
        return int(np.prod(self.values.shape[1:])) * 4

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> Activations:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batch_stats(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 sums and the (n, C) "non-zero somewhere" table of one batch."""
    channels = acts.shape[-1]
    flat = acts.reshape(len(acts), -1, channels)
    sums = flat.reshape(-1, channels).sum(axis=0, dtype="float64")
    return sums, np.any(flat != 0, axis=1)


def _arrays(data) -> tuple[np.ndarray, np.ndarray | None] | None:
    if isinstance(data, (tuple, list)) and not is_streamed(data) and len(data[0]):
        return tuple(data)
    return None


def collect(
    head,
    data,
    *,
    batch_size: int = 1024,
    strategy: tf.distribute.Strategy | None = None,
    cache_dir: str | os.PathLike | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> Activations:
    """Runs `head` over `data` once, caching its outputs and their channel statistics.

    Args:
        head: the part of the network before the mask (see `split_at_mask`).
        data: `(x, y)` arrays, a `tf.data.Dataset` or an iterable of batches
            (see `distribute.batches`); images never need to be in memory at once.
        batch_size: images per call when cutting arrays. Defaults to 1024.
        strategy: run the pass under this `tf.distribute` strategy. Defaults to `None`.
        cache_dir: keep the activations in a file in this folder instead of RAM
            (deleted by `Activations.close`). Defaults to `None`.
        pool: with in-memory arrays and no strategy, batches are shared by these
            worker threads. Defaults to `None`.

    Returns:
        `Activations` (close it when done).

    Raises:
        ValueError: empty data, or images and labels of different lengths.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> from keras_prune_guard.model.loading import deepid
    >>> from keras_prune_guard.model.surgery import insert_channel_mask, split_at_mask
    >>> head, tail = split_at_mask(insert_channel_mask(deepid()))  # head: input to pool_3
    >>> x = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)).astype("float32")
    >>> with collect(head, (x, None), cache_dir=tempfile.mkdtemp()) as acts:
    ...     print(acts.values.shape, acts.means.shape, acts.bytes_per_image)
    (8, 5, 4, 60) (60,) 4800
    """
    arrays = _arrays(data)
    if arrays is not None and arrays[1] is not None and len(arrays[1]) != len(arrays[0]):
        raise ValueError(
            f"The data's images and labels differ in length: {len(arrays[0])} images, "
            f"{len(arrays[1])} labels."
        )
    count = len(arrays[0]) if arrays is not None else None
    cache = ActivationCache(cache_dir, count=count)
    try:
        sums, positions, touched, labels = None, 0, [], []
        for out, y, (batch_sums, batch_touched) in _outputs(
            head, data, arrays, batch_size, strategy, pool
        ):
            cache.append(out)
            sums = batch_sums if sums is None else sums + batch_sums
            positions += int(np.prod(out.shape[:-1]))
            touched.append(batch_touched)
            labels.append(y)
        values = cache.finish()
    except BaseException:
        cache.close()
        raise
    y_all = None if any(y is None for y in labels) else np.concatenate(labels)
    return Activations(values, y_all, sums, positions, np.concatenate(touched), cache)


def _outputs(head, data, arrays, batch_size, strategy, pool) -> Iterable[tuple]:
    """Yields `(activations, labels, batch_stats)` per batch, in order."""
    if arrays is None or strategy is not None:
        for out, y in map_batches(head, data, strategy=strategy, batch_size=batch_size):
            yield out, y, batch_stats(out)
        return
    x, y = arrays
    forward = compiled_forward(head)
    parts = [slice(s, s + batch_size) for s in range(0, len(x), batch_size)]
    y = None if y is None else np.asarray(y, dtype="int64").reshape(-1)

    def run(part):
        out = forward(np.asarray(x[part], dtype="float32")).numpy()
        return out, batch_stats(out)

    first = run(parts[0])  # the first call traces, alone
    rest = pool.map(run, parts[1:]) if pool is not None else map(run, parts[1:])
    for part, (out, stats) in zip(parts, itertools.chain([first], rest)):
        yield out, None if y is None else y[part], stats


__all__ = ["ActivationCache", "Activations", "MappedArray", "batch_stats", "collect"]
