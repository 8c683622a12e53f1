"""Times `keras-prune-guard demo` from nothing (no cache) and again with its cache.

Usage:
    python benchmarks/bench_demo.py [--repeats 1] [--keep DIR]

Each run is its own process (`python -m keras_prune_guard.cli demo`) with a fresh cache
folder and output folder, so the first timing includes generating the benchmark faces and
training the BadNet; the second run of each round reuses that cache. Prints wall time and
peak memory (the child's `ru_maxrss`) per run, and the median. The issue's target: the
whole uncached demo in at most 5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(cache: Path, out: Path) -> tuple[float, float, str]:
    """Runs the demo in a child process; returns (seconds, peak MiB, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "keras_prune_guard.cli", "demo", "--cache-dir", str(cache),
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"demo failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return seconds, peak, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="rounds (default: 1)")
    parser.add_argument("--keep", default=None, help="keep caches and outputs in this folder")
    args = parser.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="kpg-bench-demo-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
    fresh, cached = [], []
    for i in range(args.repeats):
        cache, out = base / f"cache-{i}", base / f"out-{i}"
        seconds, peak, stdout = run_demo(cache, out)
        fresh.append(seconds)
        print(f"round {i + 1}: no cache   {seconds:7.1f} s  peak {peak:6.0f} MiB")
        seconds, _, stdout = run_demo(cache, out)
        cached.append(seconds)
        print(f"round {i + 1}: with cache {seconds:7.1f} s")
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    print("\n".join(table))
    print(f"median: no cache {statistics.median(fresh):.1f} s (target <= 300 s), "
          f"with cache {statistics.median(cached):.1f} s; outputs in {base}")
    return 0 if statistics.median(fresh) <= 300 else 1


if __name__ == "__main__":
    sys.exit(main())
