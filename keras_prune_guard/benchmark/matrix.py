"""The benchmark matrix: every attack x {pruning at each X, fine-pruning}, checked, compared.

`run_matrix` repairs one BadNet per attack (models and report in `out/<attack>/`), then
scores every saved model again from its file (B' and B'' `.keras`, G and G'' SavedModels)
and refuses the run if any figure differs from the one the report holds, then writes the
comparison report (`report.comparison`) into `out/`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from keras_prune_guard.config import FineTuneConfig, PruneConfig
from keras_prune_guard.deploy.evaluate import evaluate, load_model_for_eval
from keras_prune_guard.report.comparison import COMPARISON_FILES, write_comparison
from keras_prune_guard.results import RepairResult, Scores

#: Scores fields compared between the report and the saved models.
_FIELDS = ("test_accuracy", "attack_success", "robust_accuracy", "detection_rate",
           "false_alarm_rate")


def machine() -> str:
    """The CPU model and core count, e.g. `Intel(R) Xeon(R) ... (2 cores)`."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores), {platform.system()}"


def saved_scores(result: RepairResult) -> list[tuple[str, str, Scores]]:
    """`(what, file, scores in the report)` of every model `result` wrote and scored."""
    out = []
    for row in result.rows:
        x = f"X={row.threshold:g}"
        out += [(f"B' {x}", row.files["repaired_keras"], row.repaired),
                (f"G {x}", row.files["goodnet_savedmodel"], row.goodnet)]
        tuned = row.fine_tuned
        if tuned is not None and tuned.files:
            out += [(f"B'' {x}", tuned.files["repaired_keras"], tuned.repaired),
                    (f"G'' {x}", tuned.files["goodnet_savedmodel"], tuned.goodnet)]
    return out


def check_against_files(result: RepairResult, test, poisoned, true_labels, num_classes: int,
                        where: str) -> int:
    """Scores every saved model of `result` from its file; raises if a figure differs.

    Returns:
        How many figures were compared.

    Raises:
        ValueError: naming each model, figure, reported and re-measured value that differ.
    """
    wrong, compared = [], 0
    for what, path, reported in saved_scores(result):
        model = load_model_for_eval(path)
        flag = num_classes if what.startswith("G") else None
        again = evaluate(model, test, poisoned, flag_class=flag, true_labels=true_labels)
        for name in _FIELDS:
            if getattr(reported, name) is None:
                continue
            compared += 1
            if getattr(again, name) != getattr(reported, name):
                wrong.append(f"{what} {name}: report {getattr(reported, name)}, "
                             f"{Path(path).name} {getattr(again, name)}")
    if wrong:
        raise ValueError(f"{where}: the report differs from its saved models: " +
                         "; ".join(wrong))
    return compared


def run_matrix(attacks: Sequence[str], out: str | os.PathLike, config: PruneConfig,
               fine_tune: FineTuneConfig, repair_one: Callable, argv=None) -> dict[str, Path]:
    """Repairs each attack's BadNet into `out/<attack>/`, checks it, writes the comparison.

    Args:
        attacks: names from `benchmark.attacks.ATTACKS`.
        out: the output folder.
        config: the pruning settings (thresholds X).
        fine_tune: the fine-pruning settings (epochs 0: pruning only).
        repair_one: `repair_one(attack, out_dir, config, fine_tune, formats)` returning
            `(RepairResult, test, poisoned, true_labels)` (see
            `commands._repair_benchmark`).
        argv: the command line, for the report. Defaults to `None`.

    Returns:
        The comparison files written (`report.comparison.write_comparison`).
    """

    out = Path(out)
    for name in COMPARISON_FILES.values():  # a failed run must not leave an old comparison
        if (out / name).is_file():           # beside new attack folders
            (out / name).replace(out / f"{name}.previous")
            print(f"benchmark: moved the previous {out / name} to {name}.previous")
    results, seconds, checked = {}, {}, 0
    start = time.perf_counter()
    for attack in attacks:
        began = time.perf_counter()
        result, test, poisoned, true_labels = repair_one(attack, out / attack, config,
                                                         fine_tune, ("savedmodel",))
        checked += check_against_files(result, test, poisoned, true_labels,
                                       result.num_classes, f"{out / attack}")
        results[attack], seconds[attack] = result, time.perf_counter() - began
    meta = {
        "Command": "keras-prune-guard " + " ".join(argv or ["benchmark"]),
        "Machine": machine(),
        "Time": f"{time.perf_counter() - start:.0f} s in all (" + ", ".join(
            f"{a} {s:.0f} s" for a, s in seconds.items()) + "; BadNet training included "
            "when it was not cached)",
        "Checked": f"{checked} figures re-measured from the saved models' files, all equal",
    }
    return write_comparison(results, out, meta=meta)

