"""GoodNet inference per deployment format: Keras, SavedModel, ONNX Runtime, LiteRT.

Run from the project root (with the `[onnx,litert]` extras installed):

    python benchmarks/bench_deploy.py [--csaw ../shared/csaw] [--rounds 5] [--json out.json]

One process: the GoodNet is built, exported with `export_goodnet` to each format
(every export self-checked), and the four runners are timed side by side,
round after round, the formats interleaved within each round so that other load
on the machine slows them alike. Per round and format:

  latency     `--latency-calls` calls on one image each (batch 1); median ms per call
  throughput  `--throughput-calls` calls on a batch of 256 images; images per second

The report gives, per format, the median over the rounds (and the best round),
ratios to the Keras figure, the file sizes (ratios to the SavedModel), and that
every format gives each of the 256 images the Keras GoodNet's class with
outputs within 1e-5 (exit 1 otherwise).

Network and data: the lab's DeepID with the lab3 BadNet weights
(`<csaw>/lab3_bd_weights.h5`), B' pruned at 4 points on the 120 real clean
faces, and the 256 images are those faces and the 125 sunglasses faces, tiled
(rows 245.. repeat the first faces with Gaussian noise of sigma 3 pixel
levels). Without that folder: the built-in DeepID with random weights (seed 0,
1283 classes), B' = B with its first 30 `pool_3` channels masked, and 256
seeded uniform-noise images.

Runners: "keras" is the GoodNet called in a `tf.function` (as `compiled_forward`
runs models; `model.predict` adds per-call overhead), "savedmodel" the exported
folder's `serve` endpoint, "onnx" an `OnnxModel` (ONNX Runtime, CPU provider,
its default threads), "litert" a `LiteRTModel` (XNNPACK, `os.cpu_count()`
threads, resized to the batch at hand).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py, beside this script

RUNTIMES = ("onnxruntime", "tf2onnx", "ai_edge_litert")  # their versions go in the report

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("keras", "savedmodel", "onnx", "litert")
SUFFIXES = {"savedmodel": "", "onnx": ".onnx", "litert": ".tflite"}
BATCH = 256
ATOL = 1e-5


def load_case(csaw: Path):
    """Returns `(goodnet, images, source)`: the GoodNet to deploy and 256 raw-pixel images."""
    import h5py
    import numpy as np

    from keras_prune_guard import GoodNetModel, deepid, insert_channel_mask, prune
    from keras_prune_guard.model.surgery import find_channel_mask

    weights, clean, sunglasses = (csaw / name for name in (
        "lab3_bd_weights.h5", "real_clean_faces.h5", "real_sunglasses_faces.h5"))
    if weights.is_file() and clean.is_file() and sunglasses.is_file():
        def read(path):  # lab layout: `data` (N, 3, H, W) uint8, `label` (N,)
            with h5py.File(path, "r") as f:
                return f["data"][:].transpose(0, 2, 3, 1).astype("float32"), f["label"][:]

        bad = deepid()
        bad.load_weights(str(weights))
        (x_clean, y_clean), (x_bd, _) = read(clean), read(sunglasses)
        b_prime = prune(bad, (x_clean, y_clean), thresholds=[4.0], verbose=0).snapshots[4.0]
        faces = np.concatenate([x_clean, x_bd])
        extra = faces[: BATCH - len(faces)]
        noise = np.random.default_rng(0).standard_normal(extra.shape).astype("float32")
        x = np.concatenate([faces, np.clip(np.rint(extra + 3.0 * noise), 0, 255)])
        pruned = len(find_channel_mask(b_prime).pruned_channels())
        source = (f"lab3 BadNet, B' pruned at 4 points ({pruned} channels); {len(faces)} real "
                  f"faces of {csaw} (+{len(extra)} noisy copies)")
    else:
        import keras

        keras.utils.set_random_seed(0)
        bad = deepid()
        b_prime = insert_channel_mask(bad)
        find_channel_mask(b_prime).set_pruned(list(range(30)))
        x = np.random.default_rng(0).uniform(0, 255, (BATCH, *bad.input_shape[1:]))
        x = np.rint(x).astype("float32")
        source = (f"built-in DeepID, random weights, B' = 30 channels masked ({csaw} has no "
                  "lab3 files); seeded noise images")
    return GoodNetModel(bad, b_prime), x, source


def size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def runners(goodnet, folder: Path) -> tuple[dict, dict]:
    """`({format: callable}, {format: bytes})`, exporting the GoodNet to `folder`."""
    import tensorflow as tf

    from keras_prune_guard.deploy.evaluate import ServedModel
    from keras_prune_guard.deploy.export import export_goodnet
    from keras_prune_guard.deploy.runtimes import LiteRTModel, OnnxModel

    keras_file = folder / "goodnet.keras"
    goodnet.save(keras_file)
    paths = {fmt: export_goodnet(goodnet, folder / f"goodnet{suffix}", format=fmt)
             for fmt, suffix in SUFFIXES.items()}
    spec = tf.TensorSpec((None, *goodnet.image_shape), tf.float32)
    compiled = tf.function(lambda t: goodnet(t, training=False), input_signature=[spec])
    run = {
        "keras": lambda x: compiled(x).numpy(),
        "savedmodel": (lambda served: lambda x: served(x).numpy())(
            ServedModel(paths["savedmodel"])),
        "onnx": OnnxModel(paths["onnx"]),
        "litert": LiteRTModel(paths["litert"], batch_size=BATCH),
    }
    sizes = {"keras": size_bytes(keras_file), **{f: size_bytes(p) for f, p in paths.items()}}
    return run, sizes


def time_calls(run, x, calls: int) -> float:
    """Median seconds per call of `run(x)` over `calls` calls."""
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        run(x)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(run: dict, x, args) -> dict:
    """Interleaved rounds: {format: {"latency_ms": [...], "images_per_s": [...]}}."""
    for fn in run.values():  # warm up: trace, allocate, resize
        for _ in range(3):
            fn(x[:1])
            fn(x)
    out = {fmt: {"latency_ms": [], "images_per_s": []} for fmt in run}
    for round_no in range(args.rounds):
        for fmt, fn in run.items():
            latency = time_calls(fn, x[:1], args.latency_calls)
            per_batch = time_calls(fn, x, args.throughput_calls)
            out[fmt]["latency_ms"].append(latency * 1e3)
            out[fmt]["images_per_s"].append(len(x) / per_batch)
            print(f"round {round_no + 1}/{args.rounds} {fmt:<11} batch 1 {latency * 1e3:7.2f} ms"
                  f"   batch {len(x)} {len(x) / per_batch:8.0f} images/s", flush=True)
    return out


def agreement(run: dict, x) -> dict:
    import numpy as np

    reference = run["keras"](x)
    checks = {}
    for fmt, fn in run.items():
        got = np.asarray(fn(x))
        checks[fmt] = {"same_class": int((got.argmax(-1) == reference.argmax(-1)).sum()),
                       "images": len(x), "max_abs_diff": float(np.max(np.abs(got - reference)))}
    return checks


def report(times: dict, sizes: dict, checks: dict, source: str, before, after, args) -> bool:
    med = {f: {k: statistics.median(v) for k, v in t.items()} for f, t in times.items()}
    best = {f: {"latency_ms": min(t["latency_ms"]), "images_per_s": max(t["images_per_s"])}
            for f, t in times.items()}
    print()
    print(f"data: {source}")
    print(f"{args.rounds} rounds; batch 1: median of {args.latency_calls} calls, batch {BATCH}: "
          f"median of {args.throughput_calls} calls, per round; medians over rounds (best)")
    print(f"{'format':<12}{'batch 1 ms':>18}{'x Keras':>9}{'batch 256 img/s':>22}{'x Keras':>9}"
          f"{'size MiB':>10}{'x SavedModel':>14}{'same class':>12}{'max |diff|':>12}")
    ok = True
    for fmt in times:
        lat, thr = med[fmt]["latency_ms"], med[fmt]["images_per_s"]
        c = checks[fmt]
        ok &= c["same_class"] == c["images"] and c["max_abs_diff"] <= ATOL
        print(f"{fmt:<12}{lat:>9.2f} ({best[fmt]['latency_ms']:6.2f})"
              f"{lat / med['keras']['latency_ms']:>9.2f}"
              f"{thr:>12.0f} ({best[fmt]['images_per_s']:7.0f})"
              f"{thr / med['keras']['images_per_s']:>9.2f}"
              f"{sizes[fmt] / 2**20:>10.2f}{sizes[fmt] / sizes['savedmodel']:>14.2f}"
              f"{c['same_class']:>7}/{c['images']:<4}{c['max_abs_diff']:>12.2g}")
    print("(keras size: the .keras file)")
    print(f"load average before {before['load_average']}, after {after['load_average']}; "
          f"{before['cores']} cores, {before['cpu']}")
    print("versions: " + ", ".join(f"{k} {before[k]}" for k in (
        "python", "tensorflow", "keras", "onnxruntime", "tf2onnx", "ai_edge_litert")))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"source": source, "machine_before": before, "machine_after": after,
             "medians": med, "best": best, "rounds": times, "sizes_bytes": sizes,
             "agreement": checks, "args": vars(args)}, indent=2))
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csaw", default=str(ROOT.parent / "shared" / "csaw"),
                        help="folder with lab3_bd_weights.h5 and the real faces")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--latency-calls", type=int, default=100,
                        help="batch-1 calls per round and format (100)")
    parser.add_argument("--throughput-calls", type=int, default=5,
                        help="batch-256 calls per round and format (5)")
    parser.add_argument("--json", help="also write all measurements to this file")
    args = parser.parse_args(argv)
    if min(args.rounds, args.latency_calls, args.throughput_calls) < 1:
        parser.error("--rounds, --latency-calls and --throughput-calls must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    before = machine(*RUNTIMES)
    print(f"machine: {before}")
    goodnet, x, source = load_case(Path(args.csaw))
    with tempfile.TemporaryDirectory(prefix="kpg-deploy-") as tmp:
        run, sizes = runners(goodnet, Path(tmp))
        checks = agreement(run, x)
        times = measure(run, x, args)
    ok = report(times, sizes, checks, source, before, machine(*RUNTIMES), args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
