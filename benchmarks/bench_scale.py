"""Large validation sets: the ranking + sweep in memory, streamed, and streamed with a file cache.

Run from the project root:

    python benchmarks/bench_scale.py [--images 100000] [--dir /tmp/kpg-scale]

It generates a validation file of `--images` images in the lab's HDF5 layout
(uint8 `data` (N, 3, 55, 47), `label`) under `--dir` (once; later runs reuse
it), in chunks, by tiling the 120 real clean faces of
`<csaw>/real_clean_faces.h5` with a little noise (Gaussian, sigma 3 pixel
levels, rounded, clipped to 0..255), or without that folder the built-in
benchmark's clean validation faces. Then each mode runs in its own process
(peak memory is that process's `ru_maxrss`, from the OS):

  memory    `load_lab_h5` reads the whole file (float32 images in RAM), then `sweep`
  streamed  `sweep` on `lab_h5_dataset(file)`: batches read through tf.data
  memmap    the same, with `activation_cache=`: the activations in a memory-mapped file

Each process loads the lab3 BadNet, warms up (a sweep on 2,048 images from
arrays: traces the compiled functions), then times the ranking + sweep,
reading included. The parent prints time and peak memory per mode and checks
that every mode gives the same ranking, curve and snapshots (exit 1 if not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("memory", "streamed", "memmap")
NOISE_SIGMA = 3.0
CHUNK = 4096


def _source_faces(csaw: Path):
    """`(images uint8 (n, 3, H, W), labels, weights path or None, description)`."""
    import h5py

    faces = csaw / "real_clean_faces.h5"
    if faces.is_file() and (csaw / "lab3_bd_weights.h5").is_file():
        with h5py.File(faces, "r") as f:
            return f["data"][:], f["label"][:], csaw / "lab3_bd_weights.h5", str(faces)
    from keras_prune_guard.benchmark import ensure_benchmark

    paths = ensure_benchmark(log=lambda msg: print(msg, file=sys.stderr))
    with h5py.File(paths.valid, "r") as f:
        return f["data"][:], f["label"][:], None, f"built-in benchmark {paths.valid}"


def make_file(path: Path, count: int, csaw: Path) -> dict:
    """Writes `count` tiled noisy faces to `path` in chunks (kept if already complete)."""
    import h5py
    import numpy as np

    from keras_prune_guard._fs.atomic import atomic_path

    images, labels, _, source = _source_faces(csaw)
    if path.is_file():
        with h5py.File(path, "r") as f:
            if f["data"].shape[0] == count and f.attrs.get("source") == source:
                return {"path": str(path), "reused": True, "source": source}
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_dataset("data", (count, *images.shape[1:]), dtype="uint8",
                                chunks=(256, *images.shape[1:]))
        label = f.create_dataset("label", (count,), dtype="int64")
        f.attrs["source"] = source
        for first in range(0, count, CHUNK):
            idx = np.arange(first, min(first + CHUNK, count)) % len(images)
            noise = rng.standard_normal((len(idx), *images.shape[1:]), dtype="float32")
            chunk = images[idx].astype("float32") + NOISE_SIGMA * noise
            data[first : first + len(idx)] = np.clip(np.rint(chunk), 0, 255).astype("uint8")
            label[first : first + len(idx)] = labels[idx]
    return {"path": str(path), "reused": False, "source": source,
            "seconds": time.perf_counter() - start}


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_mode(mode: str, args) -> dict:
    """One mode in this process: load B, warm up, time ranking + sweep; returns measurements."""
    import numpy as np

    from keras_prune_guard.data.files import lab_h5_dataset, load_lab_h5
    from keras_prune_guard.model.loading import deepid, load_network
    from keras_prune_guard.model.surgery import insert_channel_mask
    from keras_prune_guard.pruning.sweep import sweep

    _, _, weights, _ = _source_faces(Path(args.csaw))
    if weights is not None:
        model = deepid()
        model.load_weights(str(weights))
    else:
        from keras_prune_guard.benchmark import ensure_benchmark

        model = load_network(ensure_benchmark().model)
    masked = insert_channel_mask(model)
    kwargs = {"batch_size": args.batch_size, "verbose": 0}
    if args.full_curve:
        kwargs["full_curve"] = True
    path = args.file
    warm = next(iter(lab_h5_dataset(path, 2048)))
    sweep(masked, (warm[0].numpy(), warm[1].numpy()), **kwargs)
    del warm
    out = {"mode": mode, "rss_warm_mib": _rss_mib()}
    start = time.perf_counter()
    if mode == "memory":
        valid = load_lab_h5(path)
        out["load_seconds"] = time.perf_counter() - start
    else:
        valid = lab_h5_dataset(path, args.batch_size)
    if mode == "memmap":
        kwargs["activation_cache"] = args.cache_dir
    result = sweep(masked, valid, **kwargs)
    out["seconds"] = time.perf_counter() - start
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["images"] = result.stats["images"]
    out["activation_bytes_per_image"] = result.stats["activation_bytes_per_image"]
    out["activation_cache"] = result.stats["activation_cache"]
    out["image_steps"] = result.stats["image_steps"]
    out["steps"] = len(result.curve) - 1
    out["order"] = result.channel_order
    out["curve"] = [p.valid_accuracy for p in result.curve]
    out["snapshots"] = {f"{t:g}": s.num_pruned for t, s in result.snapshots.items()}
    out["image_bytes_float32"] = int(np.prod(model.input_shape[1:])) * 4
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="images (100000)")
    parser.add_argument("--dir", default="/tmp/kpg-scale",
                        help="folder for the generated file and the activation cache "
                        "(/tmp/kpg-scale; never the repository)")
    parser.add_argument("--csaw", default=str(ROOT.parent / "shared" / "csaw"),
                        help="folder with lab3_bd_weights.h5 and real_clean_faces.h5")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per batch (1024)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--full-curve", action="store_true",
                        help="sweep all channels (default: thresholds 2, 4, 10)")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    if args.only:
        Path(args.report).write_text(json.dumps(run_mode(args.only, args)))
        return 0

    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES) or args.images < 1:
        parser.error(f"modes must be among {MODES} and --images >= 1")
    folder = Path(args.dir).resolve()
    if folder == ROOT or ROOT in folder.parents:
        parser.error(f"--dir {folder} is inside the repository; choose a folder outside it")
    made = make_file(folder / f"valid_{args.images}.h5", args.images, Path(args.csaw))
    size = Path(made["path"]).stat().st_size
    how = "reused" if made["reused"] else f"generated in {made['seconds']:.0f} s"
    print(f"validation file: {made['path']} ({size / 2**20:.0f} MiB, {how}; "
          f"{made['source']} tiled)", flush=True)
    print(f"load average: {[round(v, 2) for v in os.getloadavg()]}", flush=True)
    results = {}
    for mode in modes:
        report = folder / f"report-{mode}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", mode, "--file",
               made["path"], "--cache-dir", str(folder / "cache"), "--report", str(report),
               "--csaw", args.csaw, "--batch-size", str(args.batch_size)]
        if args.full_curve:
            cmd.append("--full-curve")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"mode {mode} failed (exit {done.returncode})")
        results[mode] = json.loads(report.read_text())
        report.unlink()
        r = results[mode]
        load = f"; reading {r['load_seconds']:.1f} s of it" if "load_seconds" in r else ""
        print(f"{mode:<9} {r['seconds']:8.1f} s   peak {r['peak_mib']:7.0f} MiB   "
              f"(warmed up {r['rss_warm_mib']:.0f} MiB; activations in "
              f"{r['activation_cache']}{load})", flush=True)
    first = next(iter(results.values()))
    same = all(r["order"] == first["order"] and r["curve"] == first["curve"]
               and r["snapshots"] == first["snapshots"] for r in results.values())
    print(f"\n{first['images']} images; bytes per image: {first['activation_bytes_per_image']} "
          f"cached activations, {first['image_bytes_float32']} as float32 pixels in memory, "
          f"{size // first['images']} in the uint8 file")
    print(f"{first['steps']} steps, snapshots {first['snapshots']}, "
          f"{first['image_steps']} image-steps re-run")
    print(f"same ranking, curve and snapshots in every mode: {same}")
    print(f"load average after: {[round(v, 2) for v in os.getloadavg()]}; {os.cpu_count()} "
          f"cores, Python {platform.python_version()}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"file": made, "results": {k: {x: v for x, v in r.items() if x != "order"}
                                       for k, r in results.items()}}, indent=2))
    cache = folder / "cache"
    leftovers = list(cache.iterdir()) if cache.is_dir() else []
    if leftovers:
        print(f"cache files left behind: {leftovers}")
    return 0 if same and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
