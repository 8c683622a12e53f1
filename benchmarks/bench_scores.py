"""Which detection score should a GoodNet threshold? Every score on every attack's repair.

Reads a finished `keras-prune-guard benchmark --out OUT` folder and the benchmark cache it
was built from, and for each attack, each X and each GoodNet (G = B with B', G'' = B with
B'') computes every score of `detect.scores.SCORES`: its threshold on the held-out clean
validation faces (the rows fine-pruning held out) for the budget, then on the test faces
the false alarm, the detection of the triggered faces B gives the target, and AUROC.

    python benchmarks/bench_scores.py --results OUT [--false-alarm 0.01] [--attacks ...]

Nothing here sets anything inside a repair: it is the evidence for the default score
(docs/detection.md says which attacks chose it and which were held out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np

import keras_prune_guard  # noqa: F401  (registers ChannelMask for load_model)
from keras_prune_guard.benchmark import ensure_benchmark
from keras_prune_guard.benchmark.attacks import ATTACKS
from keras_prune_guard.config import FineTuneConfig
from keras_prune_guard.data.files import load_lab_h5
from keras_prune_guard.detect.calibrate import calibration_split, threshold_for
from keras_prune_guard.detect.goodnet import GoodNetModel
from keras_prune_guard.detect.roc import roc_curve
from keras_prune_guard.detect.scores import SCORES, score_arrays


def figures(goodnet: GoodNetModel, held, test_x, bd_x, bd_y, budget: float) -> dict:
    """Every score's threshold (on `held`), test false alarm, detection of fooled, AUROC."""
    clean_out, bd_out, held_out = (goodnet.network_outputs(x) for x in (test_x, bd_x, held))
    fooled = np.argmax(bd_out[0], -1) == bd_y
    rows = {}
    for name in SCORES:
        clean, bd = score_arrays(name, *clean_out), score_arrays(name, *bd_out)
        t = threshold_for(score_arrays(name, *held_out), budget)
        rows[name] = (100 * np.mean(clean > t), 100 * np.mean(bd[fooled] > t) if fooled.any()
                      else float("nan"), roc_curve(clean, bd).auroc)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="a `keras-prune-guard benchmark --out`")
    p.add_argument("--cache-dir", default=None, help="its benchmark cache (default: default)")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    p.add_argument("--false-alarm", type=float, default=0.01)
    args = p.parse_args(argv)
    heads = " | ".join(f"{s}: FA / det. fooled / AUROC" for s in SCORES)
    print(f"| attack | GoodNet | X | {heads} |")
    print("|---|---|---:|" + "---|" * len(SCORES))
    for attack in args.attacks:
        bench = ensure_benchmark(args.cache_dir, log=None, attack=attack)
        bad = keras.saving.load_model(bench.model, compile=False)
        held = calibration_split(load_lab_h5(bench.valid), FineTuneConfig())[1]
        test_x = load_lab_h5(bench.test)[0]
        bd_x, bd_y = load_lab_h5(bench.bd_test)
        for path in sorted(Path(args.results, attack).glob("bprime_*X*.keras")):
            tag = path.stem.removeprefix("bprime_")
            repaired = keras.saving.load_model(path, compile=False)
            rows = figures(GoodNetModel(bad, repaired), held, test_x, bd_x, bd_y,
                           args.false_alarm)
            cells = " | ".join(f"{fa:.2f} / {det:.2f} / {auc:.3f}" for fa, det, auc in
                               rows.values())
            kind = "G''" if tag.startswith("ft_") else "G"
            print(f"| {attack} | {kind} | {tag.split('X')[-1]} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
