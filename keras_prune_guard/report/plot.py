"""The pruning curve as a PNG: accuracy and attack success against the fraction pruned."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_prune_guard.report.tables import as_result, threshold_name
from keras_prune_guard.results import RepairResult, ReportError

VALID_COLOR = "#1f77b4"
"""Colour of the validation-accuracy line in `plot_curve`."""
ATTACK_COLOR = "#d62728"
"""Colour of the attack-success-rate line in `plot_curve`."""
_THRESHOLD_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _threshold_lines(ax, result: RepairResult, baseline: float | None) -> None:
    """A dashed floor per threshold X and a dotted line where each B'_X was taken."""
    for i, row in enumerate(result.rows):
        color = _THRESHOLD_COLORS[i % len(_THRESHOLD_COLORS)]
        name = threshold_name(row.threshold)
        if baseline is not None:
            floor = baseline * (1 - row.threshold / 100) if result.config.relative else (
                baseline - row.threshold)
            ax.axhline(floor, color=color, ls="--", lw=1, label=f"floor for X = {name}")
        if row.fraction_pruned is not None:
            ax.axvline(row.fraction_pruned, color=color, ls=":", lw=1.5,
                       label=f"B'_{name} taken" + ("" if row.reached else " (X not reached)"))


def plot_curve(result: RepairResult | Mapping, path: str | os.PathLike | io.IOBase) -> Path | None:
    """Draws the pruning curve as a PNG.

    Validation accuracy (and, when the curve has it, attack success rate on poisoned
    data) against the fraction of channels pruned; a dashed horizontal line at the
    accuracy floor of each threshold X (baseline - X, or baseline * (1 - X/100) when
    relative), a dotted vertical line where each B'_X was taken. Uses
    `matplotlib.figure.Figure` with the Agg canvas, never `pyplot`.

    Args:
        result: the `RepairResult` (or its dict form); its curve must have a point.
        path: the `.png` file to write, or a binary file object.

    Returns:
        `Path(path)`, or None when `path` is a file object.

    Raises:
        ReportError: (a ValueError) when the curve has no point.

    Example:

    >>> plot_curve(result, "pruning_curve.png")
    PosixPath('pruning_curve.png')
    """

    result = as_result(result)
    if not result.curve:
        raise ReportError(
            "summary['curve']: expected at least one point with 'valid_accuracy' and "
            "'fraction_pruned' (or 'num_pruned'), found none"
        )
    xs = [p.fraction_pruned for p in result.curve]
    attack = [(p.fraction_pruned, p.attack_success) for p in result.curve
              if p.attack_success is not None]
    baseline = result.baseline.valid_accuracy
    if baseline is None:
        baseline = result.curve[0].valid_accuracy
    channels, layer = result.channels, result.layer or "the layer"

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(xs, [p.valid_accuracy for p in result.curve], color=VALID_COLOR, lw=2.2,
            marker="o", ms=3, label="validation accuracy (clean)")
    if attack:
        ax.plot([a[0] for a in attack], [a[1] for a in attack], color=ATTACK_COLOR, lw=2.2,
                marker="s", ms=3, label="attack success rate (poisoned validation)")
    _threshold_lines(ax, result, baseline)
    ax.set_xlabel("fraction of channels pruned"
                  + (f" (of {channels} in {layer})" if channels else ""))
    ax.set_ylabel("accuracy / attack success rate (%)")
    ax.set_xlim(0, max(1.0, max(xs)))
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    if channels:
        top = ax.secondary_xaxis(
            "top", functions=(lambda f: f * channels, lambda k: k / channels)
        )
        top.set_xlabel("channels pruned")
    ax.set_title(f"Pruning {layer}" + (f" of {result.model}" if result.model else ""))
    ax.legend(loc="lower left", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return None if isinstance(path, io.IOBase) else Path(path)
