"""The pruning sweep: mask channels one by one and measure accuracy after each.

The layers before the mask run once, on all images; their output is cached.
At step k only the images on which the newly pruned channel is non-zero
somewhere can change (any other image gets exactly the same masked input as at
step k-1), so only they are re-run through the layers after the mask: the same
Keras layers the whole model uses, so the predictions are exactly those of
running the whole masked model at every step (the "naive sweep"). Steps that
touch few images share one call; blocks go to two worker threads.

On the lab's DeepID and 11,547 images this costs about 2.5 forward passes of
the whole network for all 60 steps, against 61 for the naive sweep; see
benchmarks/README.md.

Validation data may be streamed (a `tf.data.Dataset`, e.g. `lab_h5_dataset`):
only the activations entering the mask are kept, in RAM or, with `cache_dir`,
in a file. Under a `tf.distribute` strategy the pass of the layers before the
mask and the re-runs of the layers after it are split among the replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.config import (
    DEFAULT_THRESHOLDS,
    KEEP_RULES,
    PruneConfig,
    RunOptions,
    check_thresholds,
    options_from,
)
from keras_prune_guard.data.checks import check_model_on, labelled_pairs, num_classes_or_none
from keras_prune_guard.data.distribute import BlockRunner, replicate
from keras_prune_guard.model.surgery import (
    can_split_at_mask,
    find_channel_mask,
    split_at_mask,
)
from keras_prune_guard.pruning.activations import Activations, collect
from keras_prune_guard.pruning.steps import Steps
from keras_prune_guard.pruning.sweep_whole import sweep_whole
from keras_prune_guard.results import Snapshot, SweepResult


class _TailClassifier:
    """Runs the real tail (the naive sweep's layers after the mask) and takes the argmax.

    Blocks of `block` rows go to two worker threads: while one block is in
    TensorFlow the next is being gathered and masked, and two small calls keep
    both cores busier than one. Under a strategy each block is split among the
    replicas instead (one block at a time).
    """

    def __init__(self, tail: keras.Model, block: int, pool: ThreadPoolExecutor | None = None,
                 strategy: tf.distribute.Strategy | None = None):
        self.block = int(block)
        self.pool = None if strategy is not None else pool
        if strategy is not None:

            copy = replicate(tail, strategy)
            self._classify = BlockRunner(
                lambda acts: tf.argmax(copy(acts, training=False), axis=-1,
                                       output_type=tf.int32),
                strategy,
            )
            return
        spec = tf.TensorSpec((None, *tail.input_shape[1:]), tf.float32)

        @tf.function(input_signature=[spec])
        def classify(acts):
            return tf.argmax(tail(acts, training=False), axis=-1, output_type=tf.int32)

        self._classify = lambda acts: classify(acts).numpy()

    def map(self, make: Callable[[slice], np.ndarray], count: int) -> np.ndarray:
        """Classes of `count` rows; `make(part)` builds the masked activations of rows `part`."""
        parts = [slice(s, min(s + self.block, count)) for s in range(0, count, self.block)]

        def run(part):
            return self._classify(make(part))

        out = np.empty(count, dtype="int32")
        if not parts:
            return out
        out[parts[0]] = run(parts[0])  # the first call traces, alone
        rest = parts[1:]
        done = self.pool.map(run, rest) if self.pool and len(rest) > 1 else map(run, rest)
        for part, classes in zip(rest, done):
            out[part] = classes
        return out

    def __call__(self, acts) -> np.ndarray:
        return self.map(lambda part: acts[part], len(acts))


class _StepPredictor:
    """Re-runs the tail on the images each newly pruned channel touches.

    An image on which channel c is zero everywhere gets exactly the same masked
    input with or without c, hence the same prediction.
    """

    def __init__(self, classify: _TailClassifier, activations: Activations):
        self.acts = activations.values  # an array, or a MappedArray on the cache file
        self.classify = classify
        # touched[i, c]: channel c is non-zero somewhere in image i.
        self.touched = activations.touched
        self.load = self.touched.sum(axis=0)
        self.mask = np.ones(self.acts.shape[-1], dtype="float32")
        self.pred = classify(self.acts)
        self.stats = {"image_steps": 0}

    def advance(self, channels: Sequence[int]) -> list[np.ndarray]:
        """Prunes `channels` in turn; returns every image's class after each step."""
        rows_per_step, masks, which = [], [], []
        for channel in channels:
            self.mask[int(channel)] = 0.0
            rows = np.flatnonzero(self.touched[:, int(channel)])
            rows_per_step.append(rows)
            which.append(np.full(len(rows), len(masks)))
            masks.append(self.mask.copy())
        rows_all, which_all = np.concatenate(rows_per_step), np.concatenate(which)
        masks_all = np.stack(masks)
        shape = (1,) * (self.acts.ndim - 2)

        def make(part):
            row_masks = masks_all[which_all[part]]
            return self.acts[rows_all[part]] * row_masks.reshape(len(row_masks), *shape, -1)

        classes = self.classify.map(make, len(rows_all))
        self.stats["image_steps"] += len(rows_all)
        results, current, offset = [], self.pred, 0
        for rows in rows_per_step:
            current = current.copy()
            current[rows] = classes[offset : offset + len(rows)]
            offset += len(rows)
            results.append(current)
        self.pred = current
        return results


def sweep(
    model: keras.Model,
    valid,
    config: PruneConfig | None = None,
    *,
    poisoned=None,
    run: RunOptions | None = None,
    record_predictions: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    **options,
) -> SweepResult:
    """Ranks the masked channels and prunes them one at a time, measuring accuracy.

    The model's own mask is not changed: the sweep runs the layers before the
    mask once and caches their output; each step re-runs the layers after the
    mask only on the images the newly pruned channel is non-zero on (the others
    get exactly the same input as before), several small steps per call, in
    blocks shared by two worker threads. Every image's predicted class at every
    step equals the one the whole masked model gives.

    Args:
        model: a functional model holding one `ChannelMask` (all ones, normally).
        valid: clean labelled validation data: `(x, y)` arrays, a `tf.data.Dataset`
            (e.g. `data.lab_h5_dataset`) or an iterable of `(x, y)` batches; x is
            channels-last float32 in the model's pixel range. Streamed data is
            read once; only the activations entering the mask are kept.
        config: the defense's settings (thresholds, order, relative, keep,
            batch_size, full_curve; `after` is not used: the mask is already
            in `model`). Defaults to `None` (`PruneConfig()`).
        poisoned: optional `(x, y_target)` poisoned data; its attack success rate
            is recorded in the curve, never used to decide. Defaults to `None`.
        run: strategy, activation cache folder and verbosity (`RunOptions`);
            they change no result. Defaults to `None` (`RunOptions()`).
        record_predictions: keep each step's predicted classes in
            `result.predictions` ((steps + 1, N) int32). Defaults to `False`.
        progress: called as `progress(step, total, accuracy)` after each step
            (for a progress bar; printing is `run.verbose`). Defaults to `None`.
        **options: fields of `PruneConfig` or `RunOptions` given one by one
            (e.g. `thresholds=[2, 4]`, `strategy=...`); they override `config`
            and `run`.

    Returns:
        A `SweepResult`; `stats` holds `image_steps`, `images`,
        `activation_bytes_per_image` and `activation_cache` ("memory" or "file").

    Raises:
        ValueError: a bad option (before any data is read), no ChannelMask,
            unlabelled data.

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import PruneConfig, deepid, insert_channel_mask
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> masked = insert_channel_mask(deepid(num_classes=3))  # B, e.g. load_network(...)
    >>> result = sweep(masked, (x, y), PruneConfig(thresholds=[2, 4, 10]), verbose=0)
    >>> result.layer, result.channels, sorted(result.snapshots)  # snapshots[X]: B' for X
    ('pool_3', 60, [2.0, 4.0, 10.0])
    >>> result.warnings[0]  # use more images than 8
    'valid holds 8 images: each is 12.5 points of accuracy, ...'
    """
    config, run = options_from(config, run, options, "sweep")
    find_channel_mask(model)  # a clear error when the model has no mask
    # A model that cannot be split at its mask (a subclassed model whose own call()
    # applies the ChannelMask) is swept whole, one full pass per step (sweep_whole).

    classes = num_classes_or_none(model)
    valid = labelled_pairs(valid, "valid", classes)
    poisoned = None if poisoned is None else labelled_pairs(poisoned, "poisoned", classes)
    check_model_on(model, valid, "valid")  # meaningless figures refused before the pass
    if not can_split_at_mask(model):

        return sweep_whole(model, valid, config, poisoned=poisoned, run=run,
                           record_predictions=record_predictions, progress=progress)
    head, tail = split_at_mask(model)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kpg-sweep")
    try:
        passes = {"batch_size": config.batch_size, "strategy": run.strategy,
                  "cache_dir": run.activation_cache, "pool": pool}
        with collect(head, valid, **passes) as acts:
            if acts.labels is None:
                raise ValueError("valid has no labels: expected (x, y) pairs.")
            p_acts = None
            try:
                if poisoned is not None:
                    p_acts = collect(head, poisoned, **passes)
                    if p_acts.labels is None:
                        raise ValueError("poisoned has no labels: expected (x, y_target) pairs.")
                classify = _TailClassifier(tail, config.batch_size, pool, run.strategy)
                bad = None if p_acts is None else (_StepPredictor(classify, p_acts),
                                                   p_acts.labels)
                stats = {"activation_bytes_per_image": acts.bytes_per_image,
                         "activation_cache": "memory" if acts.cache.path is None else "file"}
                steps = Steps(_StepPredictor(classify, acts), bad, acts.labels, acts.means,
                               config, run, progress, stats)
                return steps.run(model, record_predictions)
            finally:
                if p_acts is not None:
                    p_acts.close()
    finally:
        pool.shutdown(wait=True)


__all__ = ["DEFAULT_THRESHOLDS", "KEEP_RULES", "Snapshot", "SweepResult", "check_thresholds",
           "sweep"]
