"""The report's figures as PNGs: the pruning curve (accuracy and attack success against
the fraction pruned) and the detectors' ROC curves."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_prune_guard.report.tables import Detector, as_result, detectors, threshold_name
from keras_prune_guard.results import RepairResult, ReportError

VALID_COLOR = "#1f77b4"
"""Colour of the validation-accuracy line in `plot_curve`."""
ATTACK_COLOR = "#d62728"
"""Colour of the attack-success-rate line in `plot_curve`."""
_THRESHOLD_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
STRIP_COLOR = "#000000"
"""Colour of STRIP's curve in `plot_roc` (the GoodNets take their threshold's colour)."""
ROC_MIN_FALSE_ALARM = 1e-3
"""The left end of the ROC figures' log x axis; lower false alarms (0 too) are drawn there."""


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


# ----- ROC curves ---------------------------------------------------------------------------


def drawable(found: list[Detector]) -> list[tuple[str, Detector]]:
    """(legend label, detector) of each detector with a ROC curve, one per distinct curve.

    G''_X where fine-pruning kept B' has G_X's figures: it joins G_X's label.
    """
    out: list[tuple[str, Detector]] = []
    for detector in found:
        if len(detector.figures.roc) < 2:
            continue
        same = [i for i, (_, d) in enumerate(out) if d.figures is detector.figures]
        if same:
            label, first = out[same[0]]
            out[same[0]] = (f"{label} = {detector.label}", first)
        else:
            out.append((detector.label, detector))
    return out


def _style(detector: Detector) -> dict:
    """Colour (per threshold X; STRIP black) and line style (G dashed, G'' solid)."""
    if detector.index is None:
        return {"color": STRIP_COLOR, "ls": "-.", "lw": 1.8}
    color = _THRESHOLD_COLORS[detector.index % len(_THRESHOLD_COLORS)]
    tuned = "fine_tuned" in detector.kind
    return {"color": color, "ls": "-" if tuned else "--", "lw": 2.2 if tuned else 1.6}


def _clipped(value: float) -> float:
    return max(value, ROC_MIN_FALSE_ALARM)


def draw_roc(ax, curves: list[tuple[str, Detector]], legend: str = "small") -> None:
    """Draws ROC curves on `ax`: log x axis, AUROC in the legend, operating points marked.

    Each calibrated operating point (the test false alarm and detection at the threshold
    set on held-out clean images) is a circle on its curve; a dotted line marks each budget.

    Args:
        ax: a matplotlib `Axes`.
        curves: (legend label, detector) pairs, from `drawable`.
        legend: the legend's font size. Defaults to "small".
    """
    for label, detector in curves:
        figures, style = detector.figures, _style(detector)
        auroc = "—" if figures.auroc is None else f"{figures.auroc:.3f}"
        ax.plot([_clipped(fa) for fa, _ in figures.roc], [d for _, d in figures.roc],
                label=f"{label}: AUROC {auroc}", **style)
        if figures.false_alarm_rate is not None and figures.detection_rate is not None:
            ax.plot(_clipped(figures.false_alarm_rate / 100), figures.detection_rate / 100,
                    marker="o", ms=7, color=style["color"], mec="black", ls="none", zorder=3)
    for budget in sorted({d.figures.false_alarm for _, d in curves}):
        ax.axvline(_clipped(budget), color="#888888", ls=":", lw=1)
    chance = [ROC_MIN_FALSE_ALARM * 10 ** (k / 20) for k in range(61)]
    ax.plot(chance, chance, color="#bbbbbb", ls="--", lw=1, label="chance")
    ax.plot([], [], marker="o", color="white", mec="black", ls="none",
            label="calibrated threshold (test)")
    ax.set_xscale("log")
    ax.set_xlim(ROC_MIN_FALSE_ALARM, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false alarm on clean test images (log; dotted: the budget)")
    ax.set_ylabel("detection (triggered test images)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=legend, framealpha=0.9)


def has_roc(result: RepairResult | Mapping) -> bool:
    """Whether `plot_roc` has a curve to draw (some detector measured on triggered images)."""
    return bool(drawable(detectors(as_result(result))))


def plot_roc(result: RepairResult | Mapping, path: str | os.PathLike | io.IOBase) -> Path | None:
    """Draws every detector's ROC curve on the test images as a PNG (roc.png).

    One curve per detector (G_X dashed, G''_X solid in X's colour, STRIP black), AUROC in
    the legend, a circle at each calibrated operating point. The x axis is logarithmic
    from `ROC_MIN_FALSE_ALARM` to 1: the figures that matter are at false alarms of a
    few percent, which a linear axis squeezes into its left edge. Uses
    `matplotlib.figure.Figure` with the Agg canvas, never `pyplot`.

    Args:
        result: the `RepairResult` (or its dict form); some detector must have a ROC.
        path: the `.png` file to write, or a binary file object.

    Returns:
        `Path(path)`, or None when `path` is a file object.

    Raises:
        ReportError: (a ValueError) when no detector has a ROC curve (`has_roc`).

    Example:

    >>> plot_roc(result, "roc.png")
    PosixPath('roc.png')
    """
    result = as_result(result)
    curves = drawable(detectors(result))
    if not curves:
        raise ReportError("summary: expected a detector with a ROC curve ('roc' of "
                          "['rows'][i]['detection'] or ['strip']), found none")
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_roc(ax, curves)
    ax.set_title("Detectors on the test images" + (f": {result.model}" if result.model else ""))
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return None if isinstance(path, io.IOBase) else Path(path)
