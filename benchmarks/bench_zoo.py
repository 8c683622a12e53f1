"""The defense on every zoo model: forward pass, naive sweep, the package's sweep, GoodNet vs B.

Run from the project root:

    python benchmarks/bench_zoo.py [--images 256] [--models resnet50,vgg16] [--json out.json]

Per model of `tests/support/zoo.py` ZOO (keras.applications at 32x32 with
random weights, Sequential, nested backbones, BatchNorm with logits, subclassed), in this
process, each timed once with `time.perf_counter` after a warm-up on a few images (which
traces the compiled functions):

  forward   B alone: one pass over the images (the unit of the ratios)
  naive     rank the channels (one pass of the layers before the mask), then for each step
            mask one more channel and run the whole masked model over the images
  sweep     the package's `sweep` over the same steps (threshold 30 points, 5 on VGG16;
            the zoo test's orders); its time includes tracing its two compiled functions
  goodnet   `GoodNetModel(B, B')` over the images, B' = the sweep's snapshot

`forward` and `goodnet` are timed three times each, interleaved, and the fastest run is
kept (they take about a second, so a busy machine shows in a single run); `naive` and
`sweep` once.

The networks' last Dense layer is re-centred on the images (`zoo.spread_head`) so that a
random network predicts varied classes and pruning changes them. The script fails (exit 1)
unless the package's sweep predicts, for every image at every step, the class the naive
sweep predicts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from machine import machine  # benchmarks/machine.py, beside this script

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a script, not the package

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from support.zoo import ZOO, spread_head, zoo_images  # noqa: E402

from keras_prune_guard import GoodNetModel, insert_channel_mask, sweep  # noqa: E402
from keras_prune_guard.model.surgery import find_channel_mask, pruned_copy, split_at_mask  # noqa: E402

THRESHOLD = 30.0
#: Orders and thresholds as in tests/test_zoo.py (the default order where it is short).
ASCENDING = {"sequential_cnn", "batchnorm_logits", "subclassed", "vgg16", "efficientnetb0"}
THRESHOLDS = {"vgg16": 5.0}
REPEATS = 3


def _classes_fn(model):
    @tf.function(reduce_retracing=True)
    def classes(x):
        return tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32)

    return classes


def _passes(fn, x, batch_size):
    return np.concatenate([fn(x[s : s + batch_size]).numpy() for s in range(0, len(x),
                                                                              batch_size)])


def _timed(job):
    start = time.perf_counter()
    value = job()
    return time.perf_counter() - start, value


def bench_model(name: str, images: int, batch_size: int) -> dict:
    """Builds one zoo model and times its four setups; returns the measurements."""
    entry = ZOO[name]
    keras.utils.set_random_seed(0)
    model = entry.build()
    x = zoo_images(images)
    spread_head(model, x)
    y = _passes(_classes_fn(model), x, batch_size).astype("int64")  # 100% at step 0
    masked = model if entry.kind == "subclassed" else insert_channel_mask(model)
    order = "ascending" if name in ASCENDING else "descending"
    warm = slice(0, min(len(x), 2 * batch_size))
    out = {"model": name, "kind": entry.kind, "images": len(x), "order": order,
           "params": int(model.count_params())}

    forward = _classes_fn(model)
    _passes(forward, x[warm], batch_size)

    threshold = THRESHOLDS.get(name, THRESHOLD)
    kwargs = {"thresholds": [threshold], "order": order, "record_predictions": True,
              "batch_size": batch_size}
    sweep(masked, (x[warm], y[warm]), **kwargs)
    out["sweep_s"], result = _timed(lambda: sweep(masked, (x, y), **kwargs))
    steps = len(result.curve) - 1
    out.update(layer=result.layer, channels=result.channels, steps=steps)

    mask = find_channel_mask(masked)
    whole = _classes_fn(masked)
    head = split_at_mask(masked)[0] if entry.kind != "subclassed" else None
    _passes(whole, x[warm], batch_size)

    def naive():
        if head is not None:  # the ranking pass: the layers before the mask, once
            _passes(tf.function(lambda t: head(t, training=False)), x, batch_size)
        preds = []
        for k in range(steps + 1):
            mask.set_pruned(result.channel_order[:k])
            preds.append(_passes(whole, x, batch_size))
        mask.restore()
        return np.stack(preds)

    out["naive_s"], reference = _timed(naive)
    out["differ"] = int((reference != result.predictions).sum())
    out["compared"] = int(reference.size)

    b_prime = pruned_copy(masked, result.snapshots[threshold].pruned_channels)
    goodnet = GoodNetModel(model, b_prime)
    run = tf.function(lambda t: goodnet(t, training=False), reduce_retracing=True)
    _passes(run, x[warm], batch_size)
    times = {"forward_s": [], "goodnet_s": []}
    for _ in range(REPEATS):  # interleaved, the fastest kept
        times["forward_s"].append(_timed(lambda: _passes(forward, x, batch_size))[0])
        times["goodnet_s"].append(_timed(lambda: _passes(run, x, batch_size))[0])
    out.update({key: min(values) for key, values in times.items()})
    out["threshold"] = threshold
    out["shares_layers"] = bool(goodnet.shares_layers)
    out["goodnet_params_ratio"] = goodnet.count_params() / model.count_params()
    out["ratios"] = {
        "naive / sweep": out["naive_s"] / out["sweep_s"],
        "sweep / forward": out["sweep_s"] / out["forward_s"],
        "naive / forward": out["naive_s"] / out["forward_s"],
        "goodnet / forward": out["goodnet_s"] / out["forward_s"],
    }
    return out


def _print(rows: list[dict], before: dict, after: dict) -> None:
    print()
    print(f"{'model':<21}{'mask after':<26}{'ch':>5}{'steps':>6}{'fwd s':>8}{'naive s':>9}"
          f"{'sweep s':>9}{'naive/sw':>9}{'sw/fwd':>7}{'G/fwd':>7}{'G/B par':>8}  exact")
    for r in rows:
        q = r["ratios"]
        print(f"{r['model']:<21}{r['layer']:<26}{r['channels']:>5}{r['steps']:>6}"
              f"{r['forward_s']:>8.3f}{r['naive_s']:>9.2f}{r['sweep_s']:>9.3f}"
              f"{q['naive / sweep']:>9.1f}{q['sweep / forward']:>7.2f}"
              f"{q['goodnet / forward']:>7.2f}{r['goodnet_params_ratio']:>8.4f}  "
              f"{'yes' if r['differ'] == 0 else 'NO: ' + str(r['differ'])}")
    print(f"load average before {before['load_average']}, after {after['load_average']}; "
          f"{before['cores']} cores, {before['cpu']}, TensorFlow {before['tensorflow']}, "
          f"Keras {before['keras']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per model (256)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per call (64)")
    parser.add_argument("--models", default=",".join(ZOO),
                        help=f"comma-separated subset of {','.join(ZOO)}")
    parser.add_argument("--json", help="also write all measurements to this file")
    args = parser.parse_args(argv)
    # Models built with inputs=[x] called on one tensor: Keras's note is not ours to act on.
    warnings.filterwarnings("ignore", message=r"The structure of `inputs`")
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(ZOO))
    if unknown or args.images < 1 or args.batch_size < 1:
        parser.error(f"unknown models {unknown} (choose from {list(ZOO)}); images and "
                     "batch size >= 1")
    before = machine()
    print(f"machine: {before}")
    rows = []
    for name in names:
        start = time.perf_counter()
        rows.append(bench_model(name, args.images, args.batch_size))
        print(f"{name}: done in {time.perf_counter() - start:.0f} s "
              f"({rows[-1]['steps']} steps)", flush=True)
    after = machine()
    _print(rows, before, after)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine_before": before, "machine_after": after, "rows": rows,
             "args": vars(args)}, indent=2))
    mismatched = [r["model"] for r in rows if r["differ"]]
    if mismatched:
        print(f"MISMATCH: the sweep differs from the naive sweep on {mismatched}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
