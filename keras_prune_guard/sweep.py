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

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.activations import Activations, collect
from keras_prune_guard.distribute import BlockRunner
from keras_prune_guard.ranking import rank_channels
from keras_prune_guard.surgery import find_channel_mask, masked_layer_name, split_at_mask

#: Which network a threshold keeps: the first one at least X points below the
#: original accuracy (the lab's rule), or the last one still within X points.
KEEP_RULES = ("first_below", "last_within")
DEFAULT_THRESHOLDS = (2.0, 4.0, 10.0)


@dataclass
class Snapshot:
    """What a threshold X selected: `pruned_channels` (in pruning order) and their accuracy."""

    threshold: float
    reached: bool
    channels_pruned: int
    pruned_channels: list[int]
    valid_accuracy: float
    attack_success: float | None = None


@dataclass
class SweepResult:
    """The accuracy curve of a sweep and the snapshot chosen for each threshold.

    Accuracies are percentages (0..100). `curve[k]` describes the network with
    the first `k` channels of `order` pruned (`curve[0]` is the original).
    `predictions[k]` (when recorded) holds every validation image's predicted
    class at step k.
    """

    layer: str
    channels: int
    order: list[int]
    means: list[float]
    ranking: str
    relative: bool
    keep: str
    baseline_accuracy: float
    baseline_attack_success: float | None
    curve: list[dict] = field(default_factory=list)
    snapshots: dict[float, Snapshot] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    predictions: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Validates thresholds X (percentage points, or percent of the original).

    Returns:
        The thresholds as floats, sorted ascending.

    Raises:
        ValueError: a threshold is not a number, is <= 0 or >= 100, or repeats.
    """
    if isinstance(thresholds, (int, float)):
        thresholds = [thresholds]
    values = []
    for t in thresholds:
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise ValueError(
                f"thresholds must be numbers between 0 and 100 (exclusive). "
                f"Received: {t!r} in thresholds={list(thresholds)}"
            ) from None
        if not math.isfinite(value) or not 0 < value < 100:
            raise ValueError(
                f"thresholds must be > 0 and < 100 (percentage points of accuracy). "
                f"Received: {t!r} in thresholds={list(thresholds)}"
            )
        values.append(value)
    if not values:
        raise ValueError("thresholds must hold at least one value. Received: []")
    if len(set(values)) != len(values):
        raise ValueError(f"thresholds must not repeat. Received: thresholds={list(thresholds)}")
    return sorted(values)


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
            from keras_prune_guard.distribute import replicate

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


def _percent(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(pred == labels) * 100.0)


def sweep(
    model: keras.Model,
    valid,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    order: str = "ascending",
    relative: bool = False,
    keep: str = "first_below",
    poisoned=None,
    full_curve: bool = False,
    record_predictions: bool = False,
    batch_size: int = 1024,
    progress: Callable[[int, int, float], None] | None = None,
    strategy: tf.distribute.Strategy | None = None,
    cache_dir: str | os.PathLike | None = None,
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
        thresholds: accuracy drops X that select a snapshot each. Defaults to
            (2, 4, 10).
        order: "ascending" (least active first) or "descending". Defaults to
            "ascending".
        relative: X is a percentage of the original accuracy rather than
            absolute percentage points. Defaults to `False`.
        keep: "first_below" keeps the first network at least X below the
            original; "last_within" the last one still within X. Defaults to
            "first_below".
        poisoned: optional `(x, y_target)` poisoned data; its attack success rate
            is recorded in the curve, never used to decide. Defaults to `None`.
        full_curve: prune every channel instead of stopping once the largest
            threshold is reached. Defaults to `False`.
        record_predictions: keep each step's predicted classes in
            `result.predictions` ((steps + 1, N) int32). Defaults to `False`.
        batch_size: images per forward call. Defaults to 1024.
        progress: called as `progress(step, total, accuracy)` after each step.
            Defaults to `None`.
        strategy: run the passes under this `tf.distribute` strategy (e.g.
            `MirroredStrategy`); the ranking, every step's predictions, the
            curve and the snapshots are those of the single-device run.
            Defaults to `None`.
        cache_dir: keep the cached activations (4,800 bytes per image on the
            lab's DeepID) in a memory-mapped file in this folder instead of RAM;
            the file is deleted when the sweep ends. Defaults to `None`.

    Returns:
        A `SweepResult`; `stats` holds `image_steps`, `images`,
        `activation_bytes_per_image` and `activation_cache` ("memory" or "file").

    Raises:
        ValueError: bad thresholds, keep or batch size; no ChannelMask;
            unlabelled data.

    Example:

    >>> masked = insert_channel_mask(bad_model)
    >>> result = sweep(masked, (x_valid, y_valid), thresholds=[2, 4, 10])
    >>> result.snapshots[4.0].channels_pruned
    48
    """
    thresholds = check_thresholds(thresholds)
    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {KEEP_RULES}. Received: keep={keep!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
    find_channel_mask(model)  # a clear error when the model has no mask
    # --- issue 13 hook: a model that cannot be split at its mask (a subclassed model whose
    # own call() applies the ChannelMask) is swept whole, one full pass per step.
    from keras_prune_guard.surgery import can_split_at_mask

    if not can_split_at_mask(model):
        from keras_prune_guard.sweep_whole import sweep_whole

        return sweep_whole(model, valid, thresholds=thresholds, order=order, relative=relative,
                           keep=keep, poisoned=poisoned, full_curve=full_curve,
                           record_predictions=record_predictions, batch_size=batch_size,
                           progress=progress, strategy=strategy)
    # --- end of the issue 13 hook
    head, tail = split_at_mask(model)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kpg-sweep")
    try:
        passes = {"batch_size": batch_size, "strategy": strategy, "cache_dir": cache_dir,
                  "pool": pool}
        with collect(head, valid, **passes) as acts:
            if acts.labels is None:
                raise ValueError("The validation data has no labels: expected (x, y) pairs.")
            p_acts = None
            try:
                if poisoned is not None:
                    p_acts = collect(head, poisoned, **passes)
                    if p_acts.labels is None:
                        raise ValueError(
                            "The poisoned data has no labels: expected (x, y_target) pairs."
                        )
                classify = _TailClassifier(tail, batch_size, pool, strategy)
                return _sweep(model, acts, p_acts, classify, thresholds, order, relative, keep,
                              full_curve, record_predictions, batch_size, progress)
            finally:
                if p_acts is not None:
                    p_acts.close()
    finally:
        pool.shutdown(wait=True)


def _sweep(model, acts, p_acts, classify, thresholds, order, relative, keep, full_curve,
           record_predictions, batch_size, progress) -> SweepResult:
    labels = acts.labels
    means = acts.means
    order_arr = rank_channels(means, order)
    channels = acts.values.shape[-1]

    clean = _StepPredictor(classify, acts)
    bad = None if p_acts is None else (_StepPredictor(classify, p_acts), p_acts.labels)

    base = _percent(clean.pred, labels)
    base_asr = _percent(bad[0].pred, bad[1]) if bad else None
    result = SweepResult(
        layer=masked_layer_name(model),
        channels=channels,
        order=[int(c) for c in order_arr],
        means=[float(m) for m in means],
        ranking=order,
        relative=relative,
        keep=keep,
        baseline_accuracy=base,
        baseline_attack_success=base_asr,
    )
    limits = {t: base * (1 - t / 100) if relative else base - t for t in thresholds}
    for t in thresholds:
        if limits[t] < 0:
            result.warnings.append(
                f"threshold {t:g} asks for a drop below 0%: the original accuracy is "
                f"{base:.2f}%, so it can never be reached"
            )
    history = [clean.pred.copy()] if record_predictions else None
    result.curve.append(_point(0, None, channels, base, base_asr))
    first_below: dict[float, int] = {}
    total = channels
    load = clean.touched.sum(axis=0)
    step, done = 0, False
    while step < channels and not done:
        # Several steps per call when each touches few images: fuller batches.
        chunk = [int(order_arr[step])]
        while step + len(chunk) < channels and load[chunk].sum() < batch_size:
            chunk.append(int(order_arr[step + len(chunk)]))
        clean_steps = clean.advance(chunk)
        bad_steps = bad[0].advance(chunk) if bad else None
        for j, channel in enumerate(chunk):
            step += 1
            acc = _percent(clean_steps[j], labels)
            asr = _percent(bad_steps[j], bad[1]) if bad else None
            result.curve.append(_point(step, channel, channels, acc, asr))
            if history is not None:
                history.append(clean_steps[j])
            for t in thresholds:
                if t not in first_below and acc <= limits[t] + 1e-9:
                    first_below[t] = step
            if progress is not None:
                progress(step, total, acc)
            if not full_curve and len(first_below) == len(thresholds):
                done = True
                break

    for t in thresholds:
        reached = t in first_below
        if reached:
            step = first_below[t] if keep == "first_below" else first_below[t] - 1
        else:
            step = len(result.curve) - 1
            result.warnings.append(
                f"threshold {t:g}: accuracy never fell {t:g} "
                f"{'percent' if relative else 'points'} below the original {base:.2f}% "
                f"after pruning all {step} channels; the snapshot is the fully pruned network"
            )
        point = result.curve[step]
        result.snapshots[t] = Snapshot(
            threshold=t,
            reached=reached,
            channels_pruned=step,
            pruned_channels=[int(c) for c in order_arr[:step]],
            valid_accuracy=point["valid_accuracy"],
            attack_success=point["attack_success"],
        )
    if history is not None:
        result.predictions = np.stack(history)
    result.stats = dict(clean.stats, images=len(labels),
                        activation_bytes_per_image=acts.bytes_per_image,
                        activation_cache="memory" if acts.cache.path is None else "file")
    if bad:
        result.stats["poisoned"] = dict(bad[0].stats)
    return result


def _point(step: int, channel, channels: int, acc: float, asr) -> dict:
    return {
        "step": step,
        "channel": channel,
        "channels_pruned": step,
        "fraction_pruned": step / channels,
        "valid_accuracy": acc,
        "attack_success": asr,
    }
