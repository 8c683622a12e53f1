"""The whole defense in one call: B -> sweep -> B' per X -> GoodNets -> files -> report."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_prune_guard.callbacks import prune
from keras_prune_guard.evaluate import evaluate
from keras_prune_guard.export import export_goodnet, save_model, save_plain_h5
from keras_prune_guard.goodnet import GoodNetModel
from keras_prune_guard.sweep import DEFAULT_THRESHOLDS

Data = tuple[np.ndarray, np.ndarray]


def repair(
    model: keras.Model,
    valid: Data,
    out_dir: str | os.PathLike = "saved_models",
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    after: str | None = None,
    order: str = "ascending",
    relative: bool = False,
    keep: str = "first_below",
    test: Data | None = None,
    poisoned: Data | None = None,
    full_curve: bool = False,
    trigger_region: tuple[int, int, int, int] | None = None,
    model_label: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Repairs B at every threshold, writes the models and the report, returns the summary.

    For each threshold X it writes into `out_dir`: `bprime_X{X}.keras` (B' with
    its ChannelMask), `bprime_X{X}.h5` (the mask folded into the weights, plain
    Keras), `goodnet_X{X}/` (one SavedModel) and `goodnet_X{X}.keras`; and the
    report (Markdown, CSV, JSON, plot, HTML) into `out_dir/report/`. Every file
    is written to a temporary name and renamed into place.

    Args:
        model: the backdoored network B, taking raw 0..255 pixels.
        valid: clean labelled validation data `(x, y)`.
        out_dir: output folder. Defaults to "saved_models".
        thresholds: accuracy drops X. Defaults to (2, 4, 10).
        after: layer to mask. Defaults to `None` (the last pooling layer).
        order, relative, keep, full_curve: as in `sweep`.
        test: clean test data `(x, y)` to score B, each B' and each GoodNet.
            Defaults to `None`.
        poisoned: poisoned test data `(x, y_target)`; its attack success rate
            is also traced along the curve. Defaults to `None`.
        trigger_region: (row_start, row_stop, col_start, col_stop) of the
            trigger, for the saliency share. Defaults to `None`.
        model_label: how to name B in the report. Defaults to the model's name.
        log: progress printer. Defaults to `print`.

    Returns:
        The report summary (see `keras_prune_guard.report`).

    Example:

    >>> summary = repair(bad_model, (x_valid, y_valid), "saved_models",
    ...                  test=(x_test, y_test), poisoned=(x_bd, y_bd))
    """
    out_dir = Path(out_dir)
    log(f"Ranking {len(valid[0])} validation images and sweeping the mask ...")
    last = {"shown": -1}

    def progress(step, total, acc):
        if step * 10 // total != last["shown"]:
            last["shown"] = step * 10 // total
            log(f"  step {step}/{total}: validation accuracy {acc:.2f}%")

    result = prune(
        model,
        valid[0],
        valid[1],
        thresholds,
        after=after,
        order=order,
        relative=relative,
        keep=keep,
        poisoned=poisoned,
        full_curve=full_curve,
        progress=progress,
    )
    swept = result.sweep
    num_classes = int(model.output_shape[-1])
    baseline = {"valid_accuracy": swept.baseline_accuracy, "test_accuracy": None,
                "attack_success": None}
    if test is not None or poisoned is not None:
        baseline.update(evaluate(model, test, poisoned))

    rows, figure_models = [], {"B": model}
    for t, snap in swept.snapshots.items():
        tag = f"X{t:g}"
        b_prime = result.snapshots[t]
        goodnet = GoodNetModel(model, b_prime, name=f"goodnet_{tag}")
        files = {
            "repaired_keras": save_model(b_prime, out_dir / f"bprime_{tag}.keras"),
            "repaired_h5": save_plain_h5(b_prime, out_dir / f"bprime_{tag}.h5"),
            "goodnet_savedmodel": export_goodnet(goodnet, out_dir / f"goodnet_{tag}"),
            "goodnet_keras": save_model(goodnet, out_dir / f"goodnet_{tag}.keras"),
        }
        row = {
            "threshold": t,
            "reached": snap.reached,
            "channels_pruned": snap.channels_pruned,
            "fraction_pruned": snap.channels_pruned / swept.channels,
            "valid_accuracy": snap.valid_accuracy,
            "pruned_channels": snap.pruned_channels,
            "repaired": None,
            "goodnet": None,
            "files": {k: str(v) for k, v in files.items()},
        }
        if test is not None or poisoned is not None:
            row["repaired"] = evaluate(b_prime, test, poisoned)
            row["goodnet"] = evaluate(goodnet, test, poisoned, flag_class=num_classes)
        rows.append(row)
        figure_models[f"B' X={t:g}"] = b_prime
        log(f"X={t:g}: {snap.channels_pruned}/{swept.channels} channels pruned, "
            f"validation accuracy {snap.valid_accuracy:.2f}%; wrote {out_dir / ('*_' + tag)}*")

    summary = {
        "title": "keras-prune-guard repair report",
        "model": model_label or model.name,
        "layer": swept.layer,
        "channels": swept.channels,
        "num_classes": num_classes,
        "order": swept.ranking,
        "relative": swept.relative,
        "keep": swept.keep,
        "ranking": swept.order,
        "channel_means": swept.means,
        "baseline": baseline,
        "rows": rows,
        "curve": swept.curve,
        "warnings": swept.warnings,
    }
    return write_summary(summary, out_dir, figure_models, test, poisoned, trigger_region, log)


def write_summary(summary, out_dir, figure_models, test, poisoned, trigger_region, log) -> dict:
    """Adds the saliency figure (when test images exist) and writes the report files."""
    from keras_prune_guard.report import markdown_table, write_report

    report_dir = Path(out_dir) / "report"
    figures = {}
    if test is not None and poisoned is not None:
        from keras_prune_guard.saliency import comparison_figure

        pairs = min(len(test[0]), len(poisoned[0]), 64)
        fig = comparison_figure(
            figure_models,
            test[0][:pairs],
            poisoned[0][:pairs],
            report_dir / "saliency.png",
            trigger_region=trigger_region,
        )
        figures["Saliency (vanilla gradient) of B and each B'"] = fig["path"]
        if fig.get("shares"):
            summary["saliency_trigger_share"] = fig["shares"]
    paths = write_report(summary, report_dir, figures=figures)
    summary["report_files"] = {k: str(v) for k, v in paths.items()}
    log(markdown_table(summary))
    log(f"Report written to {report_dir}/ ({', '.join(sorted(p.name for p in paths.values()))})")
    return summary
