"""Pruning by mean activation (the lab's) vs RNP vs ANP masks, side by side on benchmark BadNets.

Prints, per attack and clean budget, each defense's B' (pruning only, no fine-tuning) at
X = 2, 4, 10: channels pruned, clean test accuracy, attack success, and the seconds each
defense took, measured in this one run. The masks and the sweep see clean validation
images only; attack success is measured afterwards, on the poisoned test file.

    python benchmarks/bench_defenses.py --attacks sunglasses patch --per-class 9 4.5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from keras_prune_guard import PruneConfig, prune
from keras_prune_guard.benchmark.cache import ensure_benchmark
from keras_prune_guard.config import DEFENSES, DefenseConfig
from keras_prune_guard.data.files import load_lab_h5
from keras_prune_guard.defend.masks import mask_prune
from keras_prune_guard.model.loading import load_network


def _accuracy(model, data) -> float:
    pred = np.argmax(model.predict(data[0], batch_size=512, verbose=0), -1)
    return float(np.mean(pred == data[1]) * 100)


def _budget(valid, per_class: float, classes: int, seed: int = 0):
    """A seeded draw of `per_class` clean images per class (on average) from `valid`."""
    count = min(len(valid[0]), int(round(per_class * classes)))
    rows = np.sort(np.random.default_rng([seed, 11]).permutation(len(valid[0]))[:count])
    return valid[0][rows], valid[1][rows]


def run(attack: str, per_class: float, defenses) -> None:
    bench = ensure_benchmark(attack=attack, log=None)
    model = load_network(bench.model)
    classes = int(model.output_shape[-1])
    valid = _budget(load_lab_h5(bench.valid), per_class, classes)
    test, bad = load_lab_h5(bench.test), load_lab_h5(bench.bd_test)
    print(f"\n{attack}, {per_class:g} clean images per class ({len(valid[0])}): B "
          f"{_accuracy(model, test):.2f}% clean, {_accuracy(model, bad):.2f}% attack success")
    print("| defense | X | pruned | B' clean (%) | B' attack success (%) | seconds |")
    print("|---|---|---|---|---|---|")
    for method in defenses:
        start = time.perf_counter()
        if method == "pruning":
            result = prune(model, valid, PruneConfig(), verbose=0)
        else:
            result = mask_prune(model, valid, PruneConfig(), DefenseConfig(method=method))
        seconds = time.perf_counter() - start
        for t, b_prime in result.snapshots.items():
            snap = result.sweep.snapshots[t]
            print(f"| {method} | {t:g} | {snap.num_pruned} of {result.sweep.channels} | "
                  f"{_accuracy(b_prime, test):.2f} | {_accuracy(b_prime, bad):.2f} | "
                  f"{seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attacks", nargs="+", default=["sunglasses", "patch"])
    parser.add_argument("--per-class", nargs="+", type=float, default=[9.0, 4.5])
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES), choices=DEFENSES)
    args = parser.parse_args()
    for attack in args.attacks:
        for per_class in args.per_class:
            run(attack, per_class, args.defenses)


if __name__ == "__main__":
    main()
