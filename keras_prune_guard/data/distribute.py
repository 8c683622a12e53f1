"""Passes over data on one device or under a `tf.distribute` strategy, results in input order.

No scheduling of its own: under a strategy, data batches go through
`strategy.experimental_distribute_dataset`, arrays made on the host through
`strategy.experimental_distribute_values_from_function`; each replica runs the
model on its share with `strategy.run` (inside a `tf.function`), and
`strategy.gather` brings the shares back in replica order. Every image carries
its row number through the pass, so each result lands at its own row whatever
the number of replicas or workers (`MirroredStrategy` on one machine,
`MultiWorkerMirroredStrategy` on several, where every worker gets every row).
"""

from __future__ import annotations

import heapq
import itertools
import weakref
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

_REPLICAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batches(data, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yields `(x, y)` batches from arrays, `(x, y)` pairs or an iterable of batches.

    Args:
        data: an array `x`, a tuple `(x, y)` of arrays, a `tf.data.Dataset`
            or any iterable yielding `x` or `(x, y)` batches.
        batch_size: batch size used to cut arrays. Defaults to 1024.

    Yields:
        `(x, y)` with `x` float32 channels-last and `y` an int64 vector or None.

    Example:

    >>> import numpy as np
    >>> [len(x) for x, _ in batches((np.zeros((5, 2, 2, 1)), np.arange(5)), 2)]
    [2, 2, 1]
    """
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple):
        x, y = data
        if hasattr(x, "shape") and not isinstance(x, tf.data.Dataset):
            for start in range(0, len(x), batch_size):
                yield (
                    np.asarray(x[start : start + batch_size], dtype="float32"),
                    None if y is None else np.asarray(y[start : start + batch_size], "int64"),
                )
            return
    if isinstance(data, np.ndarray):
        for start in range(0, len(data), batch_size):
            yield np.asarray(data[start : start + batch_size], dtype="float32"), None
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            x, y = item[0], item[1] if len(item) > 1 else None
        else:
            x, y = item, None
        x = np.asarray(x, dtype="float32")
        yield x, None if y is None else np.asarray(y, dtype="int64").reshape(-1)


def compiled_forward(model: keras.Model):
    """Returns a `tf.function` running `model` in inference mode on any batch size.

    One function is traced per model and reused (kept while the model lives).

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> compiled_forward(deepid())(np.zeros((2, 55, 47, 3), "float32")).shape
    TensorShape([2, 1283])
    """
    forward = _FORWARDS.get(model)
    if forward is None:
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        _FORWARDS[model] = forward
    return forward


def replica_count(strategy: tf.distribute.Strategy | None) -> int:
    """Number of replicas in sync: 1 without a strategy."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def replicate(model, strategy: tf.distribute.Strategy):
    """A copy of `model` whose variables live on every replica (built under `strategy.scope()`).

    The copy is made once per model and strategy; its weights are refreshed from
    `model` on every call, so a mask changed since is seen. Models that are not
    Keras models (a loaded SavedModel) are returned as they are.

    Args:
        model: a Keras model (functional, Sequential or serializable subclass).
        strategy: the strategy whose replicas run the copy.

    Returns:
        The copy (or `model` itself when it is not a `keras.Model`).

    Example:

    >>> import keras
    >>> import tensorflow as tf
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> copy = replicate(model, tf.distribute.MirroredStrategy(["/cpu:0"]))  # e.g. all GPUs
    >>> copy is not model, [w.shape for w in copy.get_weights()]
    (True, [(4, 2), (2,)])
    """
    if not isinstance(model, keras.Model):
        return model
    copies = _REPLICAS.setdefault(model, [])
    found = [copy for owner, copy in copies if owner is strategy]
    if found:
        copy = found[0]
    else:
        with strategy.scope():
            copy = keras.models.clone_model(model)
        copies.append((strategy, copy))
    copy.set_weights(model.get_weights())
    return copy


def _spec_of(batch: np.ndarray) -> tf.TensorSpec:
    return tf.TensorSpec((None, *batch.shape[1:]), tf.float32)


def to_dataset(data, batch_size: int = 1024) -> tuple[tf.data.Dataset, bool]:
    """`(x, y, row)` batches of `data` as a `tf.data.Dataset`, rows numbered from 0.

    Args:
        data: a `tf.data.Dataset` of `x` or `(x, y)` batches, `(x, y)` arrays,
            an array or any iterable of batches (see `batches`).
        batch_size: batch size used to cut arrays. Defaults to 1024.

    Returns:
        `(dataset, labelled)`: x float32, y int64 (zeros when `labelled` is
        False), row int64; `labelled` tells whether `data` has labels.

    Raises:
        ValueError: `data` is empty.
    """
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        labelled = isinstance(spec, (tuple, list)) and len(spec) > 1

        def split(*item):
            x = tf.cast(item[0], tf.float32)
            if labelled:
                y = tf.reshape(tf.cast(item[1], tf.int64), [-1])
            else:
                y = tf.zeros(tf.shape(x)[:1], tf.int64)
            return x, y

        ds = data.map(split)
    else:
        stream = batches(data, batch_size)
        first = next(stream, None)
        if first is None:
            raise ValueError("The data is empty: expected at least one image.")
        labelled = first[1] is not None

        def generate():
            for x, y in itertools.chain([first], stream):
                yield x, (np.zeros(len(x), "int64") if y is None else y)

        ds = tf.data.Dataset.from_generator(generate, output_signature=(
            _spec_of(first[0]), tf.TensorSpec((None,), tf.int64)))

    def number(start, item):
        x, y = item
        count = tf.cast(tf.shape(x)[0], tf.int64)
        return start + count, (x, y, start + tf.range(count, dtype=tf.int64))

    ds = ds.scan(tf.constant(0, tf.int64), number)
    options = tf.data.Options()
    # Rows are numbered, so sharding by element on several workers keeps each at its place.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options), labelled


class _InOrder:
    """Puts gathered rows back in input order and hands out contiguous runs from row 0."""

    def __init__(self):
        self.next_row = 0
        self.waiting: list = []
        self.counter = itertools.count()

    def push(self, rows: np.ndarray, *values: np.ndarray) -> Iterator[tuple]:
        if len(rows) == 0:
            return
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        values = tuple(v[order] for v in values)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for part in np.split(np.arange(len(rows)), breaks):
            start = int(rows[part[0]])
            heapq.heappush(self.waiting, (start, next(self.counter), [v[part] for v in values]))
        while self.waiting and self.waiting[0][0] == self.next_row:
            start, _, run = heapq.heappop(self.waiting)
            self.next_row = start + len(run[0])
            yield tuple(run)

    def close(self) -> None:
        if self.waiting:
            raise ValueError(
                f"The distributed pass lost rows: row {self.next_row} never came back "
                f"(rows from {self.waiting[0][0]} on are waiting); expected every row once."
            )


def _replica_fn(model, argmax: bool) -> Callable:
    def run(x, y, rows):
        out = model(x, training=False)
        if argmax:
            out = tf.argmax(out, axis=-1, output_type=tf.int64)
        return out, y, rows

    return run


def map_batches(
    model,
    data,
    *,
    strategy: tf.distribute.Strategy | None = None,
    batch_size: int = 1024,
    argmax: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Runs `model` over `data` and yields `(outputs, labels)` for consecutive rows, in order.

    Without a strategy, one batch at a time on the default device (the model's
    compiled forward function). Under a strategy, each batch is split among
    the replicas (`experimental_distribute_dataset`), run with `strategy.run`
    and gathered (`strategy.gather`); rows are put back in input order.

    Args:
        model: a Keras model (or a callable on float32 batches, such as a
            loaded SavedModel).
        data: see `to_dataset`.
        strategy: a `tf.distribute.Strategy`, or `None` for one device.
            Defaults to `None`.
        batch_size: images per (global) batch when cutting arrays. Defaults to 1024.
        argmax: yield predicted classes (int64) instead of the outputs.
            Defaults to `False`.

    Yields:
        `(outputs, labels)` numpy arrays; labels are `None` for unlabelled data.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import tensorflow as tf
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> data, strategy = (np.ones((5, 4)), np.arange(5)), tf.distribute.MirroredStrategy(["/cpu:0"])
    >>> for classes, y in map_batches(model, data, strategy=strategy, batch_size=2, argmax=True):
    ...     print(classes.shape, y.tolist())
    (2,) [0, 1]
    (2,) [2, 3]
    (1,) [4]
    """
    if strategy is None:
        forward = compiled_forward(model) if isinstance(model, keras.Model) else model
        for x, y in batches(data, batch_size):
            out = np.asarray(forward(x))
            yield (np.argmax(out, axis=-1).astype("int64") if argmax else out), y
        return
    ds, labelled = to_dataset(data, batch_size)
    replica_model = replicate(model, strategy)
    per_replica = _replica_fn(replica_model, argmax)

    @tf.function(reduce_retracing=True)
    def step(item):
        results = strategy.run(per_replica, args=item)
        return tuple(strategy.gather(r, axis=0) for r in results)

    order = _InOrder()
    for item in strategy.experimental_distribute_dataset(ds):
        out, y, rows = (t.numpy() for t in step(item))
        for run_out, run_y in order.push(rows, out, y):
            yield run_out, (run_y if labelled else None)
    order.close()


class BlockRunner:
    """Runs a function on host arrays, split among a strategy's replicas.

    Args:
        fn: a Python function of one float32 batch tensor (traced per replica).
        strategy: the strategy whose replicas share each array.

    Example:

    >>> import numpy as np
    >>> import tensorflow as tf
    >>> strategy = tf.distribute.MirroredStrategy(["/cpu:0"])  # e.g. all GPUs
    >>> classify = BlockRunner(lambda a: tf.argmax(a, -1), strategy)  # e.g. a model's tail
    >>> classify(np.eye(3)[[2, 0, 1]])  # numpy, one row per input row
    array([2, 0, 1])
    """

    def __init__(self, fn: Callable, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        replicas = replica_count(strategy)

        def per_replica(x):
            return fn(x)

        @tf.function(reduce_retracing=True)
        def step(parts):
            return strategy.gather(strategy.run(per_replica, args=(parts,)), axis=0)

        self._step = step
        self._replicas = replicas

    def __call__(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array, dtype="float32")
        share = -(-len(array) // self._replicas)

        def part(context):
            i = context.replica_id_in_sync_group
            return tf.constant(array[i * share : (i + 1) * share])

        parts = self.strategy.experimental_distribute_values_from_function(part)
        return self._step(parts).numpy()


__all__ = [
    "BlockRunner",
    "batches",
    "compiled_forward",
    "map_batches",
    "replica_count",
    "replicate",
    "to_dataset",
]
