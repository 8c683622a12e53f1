"""Speed of the pruning sweep and of GoodNet inference, against the naive sweep.

Run from the project root:

    python benchmarks/bench_speed.py [--images 11547] [--repeats 3] [--csaw ../shared/csaw]

Every setup runs in its own process (its peak memory is that process's
`ru_maxrss`: the OS's peak cannot be reset inside one process), once per round,
the setups interleaved round after round so that a busy machine slows them
alike. Each process loads the network and the data, warms up on a few images
(traces the compiled functions), then times one run with `time.perf_counter`.
The parent prints the median and min of the rounds, the ratios, and checks that
the project's sweep predicts, for every image at every step, the class the
naive sweep predicts.

Network and data: the lab's DeepID with the lab3 BadNet weights
(`<csaw>/lab3_bd_weights.h5`), and `--images` validation images made by tiling
the 120 real clean faces of `<csaw>/real_clean_faces.h5` with a little noise
(Gaussian, sigma 3 pixel levels, rounded and clipped to 0..255). Without that
folder, the built-in benchmark's BadNet and its clean validation faces
(`keras_prune_guard.benchmark.ensure_benchmark()`, built and cached on first
use), tiled the same way.

Setups:
  forward      B alone: one pass over the validation images (the unit of the ratios)
  naive        rank the channels, then for each of the 60 channels mask one more
               and run the whole masked model over the validation images
  sweep        the project's `sweep` over all channels (`full_curve=True`)
  sweep_x      the project's `sweep` with thresholds (2, 4, 10): it stops at 10
  goodnet      `GoodNetModel(B, B')`, B' = `prune(B, ...).snapshots[4.0]`
  two_models   B and B' run as two separate models
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("forward", "naive", "sweep", "sweep_x", "goodnet", "two_models")
NOISE_SIGMA = 3.0


# --- data and network (in the setup processes) ---------------------------------------------


def _tile(images, labels, count: int, seed: int = 0):
    """`count` images: `images` repeated, plus rounded Gaussian noise, in float32 chunks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = np.arange(count) % len(images)
    out = np.empty((count, *images.shape[1:]), dtype="float32")
    for start in range(0, count, 1024):
        part = slice(start, min(start + 1024, count))
        noise = rng.standard_normal((part.stop - start, *images.shape[1:]), dtype="float32")
        out[part] = images[idx[part]].astype("float32") + NOISE_SIGMA * noise
    np.clip(np.rint(out, out=out), 0, 255, out=out)
    return out, np.asarray(labels)[idx]


def load_case(csaw: Path, count: int):
    """Returns `(model, x, y, source)`: B taking raw pixels and `count` validation images."""
    import h5py

    def read(path):  # lab layout: `data` (N, 3, H, W) uint8, `label` (N,)
        with h5py.File(path, "r") as f:
            return f["data"][:].transpose(0, 2, 3, 1), f["label"][:]

    weights = csaw / "lab3_bd_weights.h5"
    faces = csaw / "real_clean_faces.h5"
    if weights.is_file() and faces.is_file():
        from keras_prune_guard.model.loading import deepid

        model = deepid()
        model.load_weights(str(weights))
        images, labels = read(faces)
        x, y = _tile(images, labels, count)
        return model, x, y, f"lab3 BadNet, {len(images)} real faces of {faces} tiled"
    try:
        from keras_prune_guard.benchmark import ensure_benchmark
        from keras_prune_guard.model.loading import load_network
    except ImportError as err:
        raise SystemExit(
            f"{csaw} has no lab3_bd_weights.h5/real_clean_faces.h5, and the built-in benchmark "
            f"is not available ({err}). Pass --csaw DIR with the lab's files."
        ) from err
    paths = ensure_benchmark(log=lambda msg: print(msg, file=sys.stderr))
    model = load_network(model_path=paths.model)
    images, labels = read(paths.valid)
    x, y = _tile(images, labels, count)
    return model, x, y, f"built-in benchmark BadNet, {len(images)} faces of {paths.valid} tiled"


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_setup(name: str, args) -> dict:
    """Runs one setup in this process: warm-up, one timed run; returns the measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from keras_prune_guard.detect.goodnet import GoodNetModel
    from keras_prune_guard.model.surgery import (
        find_channel_mask,
        insert_channel_mask,
        split_at_mask,
    )
    from keras_prune_guard.pruning.prune import prune
    from keras_prune_guard.pruning.ranking import channel_ranking, compiled_forward
    from keras_prune_guard.pruning.sweep import sweep

    model, x, y, source = load_case(Path(args.csaw), args.images)
    loaded_kib = _rss_kib()
    bs = args.batch_size
    warm = slice(0, min(len(x), 2 * bs))
    out: dict = {"setup": name, "source": source, "images": len(x), "rss_loaded_kib": loaded_kib}

    def passes(forward, data):
        return np.concatenate([forward(data[s : s + bs]).numpy() for s in range(0, len(data), bs)])

    if name == "forward":
        forward = compiled_forward(model)
        passes(forward, x[warm])
        job = lambda: passes(forward, x)  # noqa: E731
    elif name == "naive":
        masked = insert_channel_mask(model)
        mask = find_channel_mask(masked)
        forward = compiled_forward(masked)
        head, _ = split_at_mask(masked)
        passes(forward, x[warm])
        channel_ranking(head, x[warm], batch_size=bs)

        def job():
            order, _ = channel_ranking(head, x, batch_size=bs)
            preds = []
            for k in range(len(order) + 1):
                mask.set_pruned(order[:k])
                preds.append(passes(forward, x).argmax(-1).astype("int32"))
            mask.restore()
            return np.stack(preds), order
    elif name.startswith("sweep"):
        masked = insert_channel_mask(model)
        kwargs = {"batch_size": bs, "record_predictions": True, "verbose": 0}
        if name == "sweep_x":
            kwargs["thresholds"] = (2, 4, 10)
        else:
            kwargs["full_curve"] = True
        sweep(masked, (x[warm], y[warm]), **kwargs)

        def job():
            result = sweep(masked, (x, y), **kwargs)
            return result.predictions, np.asarray(result.channel_order), result
    elif name in ("goodnet", "two_models"):
        b_prime = prune(model, (x, y), thresholds=[4.0], verbose=0).snapshots[4.0]
        if name == "goodnet":
            goodnet = GoodNetModel(model, b_prime)
            spec = tf.TensorSpec((None, *goodnet.image_shape), tf.float32)
            forward = tf.function(lambda t: goodnet(t, training=False), input_signature=[spec])
            out["shares_layers"] = goodnet.shares_layers
            passes(forward, x[warm])
            job = lambda: passes(forward, x)  # noqa: E731
        else:
            forward_b, forward_p = compiled_forward(model), compiled_forward(b_prime)
            passes(forward_b, x[warm])
            passes(forward_p, x[warm])
            job = lambda: (passes(forward_b, x), passes(forward_p, x))  # noqa: E731
        out["b_prime_pruned"] = len(find_channel_mask(b_prime).pruned_channels())
    else:
        raise SystemExit(f"unknown setup {name!r}; expected one of {SETUPS}")

    out["rss_before_kib"] = _rss_kib()
    start = time.perf_counter()
    value = job()
    out["seconds"] = time.perf_counter() - start
    out["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    if name in ("naive", "sweep", "sweep_x") and args.predictions:
        np.save(args.predictions, value[0])
        np.save(args.predictions.replace(".npy", "_order.npy"), value[1])
    if name.startswith("sweep"):
        result = value[2]
        out["steps"] = len(result.curve) - 1
        out["stats"] = {k: v for k, v in result.stats.items() if k != "poisoned"}
        out["snapshots"] = {f"{t:g}": s.num_pruned for t, s in result.snapshots.items()}
    if name == "goodnet":
        # Check the GoodNet against B and B' run apart (not timed).
        classes = value.argmax(-1)
        bad = model.predict(x, batch_size=bs, verbose=0).argmax(-1)
        fixed = b_prime.predict(x, batch_size=bs, verbose=0).argmax(-1)
        expected = np.where(bad == fixed, fixed, value.shape[-1] - 1)
        out["goodnet_matches_b_and_b_prime"] = bool(np.array_equal(classes, expected))
    return out


# --- the parent: rounds of subprocesses, then the report -------------------------------------


def _spawn(name: str, args, workdir: Path, round_no: int) -> dict:
    report = workdir / f"{name}-{round_no}.json"
    preds = workdir / f"{name}-{round_no}.npy"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--report", str(report),
           "--predictions", str(preds), "--images", str(args.images), "--csaw", str(args.csaw),
           "--batch-size", str(args.batch_size)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"setup {name} failed (exit {done.returncode})")
    result = json.loads(report.read_text())
    result["predictions_file"] = str(preds) if preds.exists() else None
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=11547, help="validation images (11547)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every setup (3)")
    parser.add_argument("--csaw", default=str(ROOT.parent / "shared" / "csaw"),
                        help="folder with lab3_bd_weights.h5 and real_clean_faces.h5")
    parser.add_argument("--batch-size", type=int, default=2048, help="images per call (2048)")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"comma-separated subset of {','.join(SETUPS)}")
    parser.add_argument("--json", help="also write all measurements to this file")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--predictions", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.only:
        result = run_setup(args.only, args)
        Path(args.report).write_text(json.dumps(result))
        return 0

    setups = [s for s in args.setups.split(",") if s]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown or args.repeats < 1 or args.images < 1:
        parser.error(f"unknown setups {unknown} (choose from {SETUPS}); repeats and images >= 1")
    machine_before = machine()
    print(f"machine: {machine_before}")
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory(prefix="kpg-bench-") as tmp:
        for round_no in range(args.repeats):
            for name in setups:
                result = _spawn(name, args, Path(tmp), round_no)
                runs[name].append(result)
                print(f"round {round_no + 1}/{args.repeats} {name:<12} {result['seconds']:8.3f} s"
                      f"  peak {result['peak_kib'] / 1024:7.0f} MiB", flush=True)
        exact = _check_exact(runs)
    machine_after = machine()
    summary = _summarise(runs, exact)
    _print(summary, runs, args, machine_before, machine_after)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine_before": machine_before, "machine_after": machine_after,
             "summary": summary, "runs": runs, "args": vars(args)}, indent=2, default=str))
    return 0 if exact.get("ok", True) else 1


def _check_exact(runs) -> dict:
    """Compares every sweep's predictions with the naive sweep's of the same round."""
    import numpy as np

    if "naive" not in runs:
        return {}
    checks = {}
    for name in ("sweep", "sweep_x"):
        for naive, ours in zip(runs["naive"], runs.get(name, [])):
            ref = np.load(naive["predictions_file"])
            got = np.load(ours["predictions_file"])
            order_ref = np.load(naive["predictions_file"].replace(".npy", "_order.npy"))
            order_got = np.load(ours["predictions_file"].replace(".npy", "_order.npy"))
            steps = len(got)
            same_order = np.array_equal(order_ref[: steps - 1], order_got[: steps - 1])
            differ = int((ref[:steps] != got).sum())
            entry = checks.setdefault(name, {"compared": 0, "differ": 0, "same_order": True})
            entry["compared"] += got.size
            entry["differ"] += differ
            entry["same_order"] &= bool(same_order)
            entry["steps"] = steps
    checks["ok"] = all(c["differ"] == 0 and c["same_order"] for k, c in checks.items())
    return checks


def _summarise(runs, exact) -> dict:
    out = {"setups": {}, "ratios": {}, "exact": exact}
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        out["setups"][name] = {
            "median_s": statistics.median(secs), "min_s": min(secs),
            "peak_mib": max(r["peak_kib"] for r in rs) / 1024,
            "loaded_mib": max(r["rss_loaded_kib"] for r in rs) / 1024,
            "warm_mib": max(r["rss_before_kib"] for r in rs) / 1024,
        }
    med = {k: v["median_s"] for k, v in out["setups"].items()}

    def ratio(label, a, b):
        if a in med and b in med:
            out["ratios"][label] = med[a] / med[b]

    ratio("naive / sweep", "naive", "sweep")
    ratio("sweep / forward", "sweep", "forward")
    ratio("sweep_x / forward", "sweep_x", "forward")
    ratio("naive / forward", "naive", "forward")
    ratio("goodnet / forward", "goodnet", "forward")
    ratio("two_models / forward", "two_models", "forward")
    return out


def _print(summary, runs, args, before, after) -> None:
    print()
    print(f"data: {runs[next(iter(runs))][0]['source']}; {args.images} images, "
          f"batch size {args.batch_size}, {args.repeats} rounds")
    print("memory: RSS of the setup's process once the network and images are loaded, once")
    print("warmed up (just before the timed run), and its peak (ru_maxrss, at the end)")
    print(f"{'setup':<13}{'median s':>10}{'min s':>10}{'loaded MiB':>12}{'warm MiB':>10}"
          f"{'peak MiB':>10}")
    for name, s in summary["setups"].items():
        print(f"{name:<13}{s['median_s']:>10.3f}{s['min_s']:>10.3f}{s['loaded_mib']:>12.0f}"
              f"{s['warm_mib']:>10.0f}{s['peak_mib']:>10.0f}")
    print("ratios (medians):")
    for label, value in summary["ratios"].items():
        print(f"  {label:<24}{value:8.2f}")
    for name in ("sweep", "sweep_x"):
        if name in runs:
            r = runs[name][0]
            print(f"{name}: {r.get('steps')} steps, snapshots {r.get('snapshots')}, "
                  f"stats {r.get('stats')}")
    if "goodnet" in runs:
        g = runs["goodnet"][0]
        print(f"goodnet: shares the layers before the mask: {g.get('shares_layers')}; B' has "
              f"{g.get('b_prime_pruned')} channels pruned; outputs match B and B' run apart: "
              f"{g.get('goodnet_matches_b_and_b_prime')}")
    for name, check in summary["exact"].items():
        if name != "ok":
            print(f"exactness {name}: {check['differ']} of {check['compared']} image-steps "
                  f"differ from the naive sweep over {check['steps']} steps (same channel "
                  f"order: {check['same_order']})")
    print(f"load average before {before['load_average']}, after {after['load_average']}; "
          f"{before['cores']} cores, {before['cpu']}")


if __name__ == "__main__":
    sys.exit(main())
