"""The repair report: Markdown/CSV tables, the pruning-curve plot and a self-contained HTML page.

Everything here reads one plain, JSON-serialisable `summary` dict made by the repair
pipeline (accuracies in percent 0..100, `None` where not measured)::

    {"title": ..., "model": ..., "layer": ..., "channels": 60, "num_classes": 1283,
     "order": "ascending", "relative": False, "keep": "first_below",
     "baseline": {"valid_accuracy": ..., "test_accuracy": ..., "attack_success": ...},
     "rows": [{"threshold": 2.0, "reached": True, "channels_pruned": 45,
               "fraction_pruned": 0.75, "valid_accuracy": ...,
               "repaired": {"test_accuracy": ..., "attack_success": ...} or None,
               "goodnet": {"test_accuracy": ..., "attack_success": ...,
                           "detection_rate": ..., "false_alarm_rate": ...} or None,
               "files": {...},
               "fine_tuned": {"valid_accuracy": ..., "epochs": 5,
                              "repaired": {...} or None, "goodnet": {...} or None,
                              "files": {...}}  # optional: only when B'_X was fine-tuned
               }, ...],
     "fine_tune": {"epochs": 5, "learning_rate": 1e-4, "data": ..., "images": ...},  # optional
     "curve": [{"step": 0, "channel": None, "channels_pruned": 0, "fraction_pruned": 0.0,
                "valid_accuracy": ..., "attack_success": ... or None}, ...],
     "warnings": [...]}

Keys this module does not know are ignored. No TensorFlow is needed; matplotlib is imported
only when a plot is drawn and never through `pyplot`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from keras_prune_guard.atomic import atomic_path

CSV_COLUMNS = (
    "model",
    "threshold",
    "channels_pruned",
    "fraction_pruned",
    "valid_accuracy",
    "test_accuracy",
    "attack_success",
    "detection_rate",
    "false_alarm_rate",
)
"""The columns of `csv_rows` and `report.csv`, in order."""

# Columns shown only when at least one model has a value for them.
_OPTIONAL_COLUMNS = ("test_accuracy", "attack_success", "detection_rate", "false_alarm_rate")
_HEADERS = {
    "model": "Model",
    "threshold": "X (points)",
    "channels_pruned": "Channels pruned",
    "fraction_pruned": "Fraction pruned",
    "valid_accuracy": "Validation accuracy (%)",
    "test_accuracy": "Clean test accuracy (%)",
    "attack_success": "Attack success rate (%)",
    "detection_rate": "Detection rate (%)",
    "false_alarm_rate": "False alarm rate (%)",
}
_MISSING = "—"


class ReportError(ValueError):
    """A summary, image or figure argument that the report cannot use (a `ValueError`)."""


CURVE_FIGURE = "Pruning curve"
"""The `images` key under which `render_html` expects (or else draws) the pruning curve."""

VALID_COLOR = "#1f77b4"
"""Colour of the validation-accuracy line in `plot_curve`."""
ATTACK_COLOR = "#d62728"
"""Colour of the attack-success-rate line in `plot_curve`."""
_THRESHOLD_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}

_CSP = (
    '<meta http-equiv="Content-Security-Policy" '
    "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
)
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #fafafa; color: #222; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 0.3em; }
h2 { font-size: 1.2em; margin: 1.4em 0 0.5em; border-bottom: 1px solid #ddd; }
p.meta { color: #555; margin: 0 0 1em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; white-space: nowrap; }
tr.original td { background: #f7f7ff; }
tr.goodnet td { background: #f6fbf6; }
tr.fine_tuned td { background: #fdf6ec; }
tr.goodnet.fine_tuned td { background: #f3efe0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
section.warnings { background: #fff8e1; border-left: 4px solid #f0ad00; padding: 4px 16px; }
code { font-size: 0.9em; }
"""


def _number(value: Any, where: str) -> float | None:
    """`value` as a float, or None; raises ReportError when it is not a number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value.item())  # numpy scalars
        except (AttributeError, TypeError, ValueError):
            raise ReportError(
                f"summary {where}: expected a number or None, found {value!r}"
            ) from None
    return float(value)


def _mapping(value: Any, where: str) -> Mapping:
    """`value` itself when it is a mapping, `{}` for None; raises ReportError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ReportError(
            f"summary {where}: expected a dict or None, found {type(value).__name__}"
        )
    return value


def _list(summary: Mapping, key: str) -> list:
    value = summary.get(key)
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ReportError(f"summary[{key!r}]: expected a list, found {type(value).__name__}")
    return list(value)


def _check_summary(summary: Any) -> Mapping:
    if not isinstance(summary, Mapping):
        raise ReportError(f"summary: expected a dict, found {type(summary).__name__}")
    return summary


def _threshold_name(threshold: float) -> str:
    return f"{threshold:g}"


def _baseline_valid(summary: Mapping) -> float | None:
    """The baseline validation accuracy, falling back on the curve's first step."""
    value = _number(
        _mapping(summary.get("baseline"), "['baseline']").get("valid_accuracy"),
        "['baseline']['valid_accuracy']",
    )
    if value is None:
        curve = _list(summary, "curve")
        if curve:
            value = _number(
                _mapping(curve[0], "['curve'][0]").get("valid_accuracy"),
                "['curve'][0]['valid_accuracy']",
            )
    return value


def _model_rows(summary: Mapping) -> list[tuple[dict, dict]]:
    """One (csv row, display info) pair per model: B, then B'_X and G_X per threshold."""
    summary = _check_summary(summary)
    channels = summary.get("channels")
    baseline = _mapping(summary.get("baseline"), "['baseline']")
    out: list[tuple[dict, dict]] = []
    original = {
        "model": "B",
        "threshold": None,
        "channels_pruned": 0,
        "fraction_pruned": 0.0,
        "valid_accuracy": _baseline_valid(summary),
        "test_accuracy": _number(
            baseline.get("test_accuracy"), "['baseline']['test_accuracy']"
        ),
        "attack_success": _number(
            baseline.get("attack_success"), "['baseline']['attack_success']"
        ),
        "detection_rate": None,
        "false_alarm_rate": None,
    }
    out.append((original, {"label": "B (original)", "kind": "original", "channels": channels}))
    for i, raw in enumerate(_list(summary, "rows")):
        row = _mapping(raw, f"['rows'][{i}]")
        where = f"['rows'][{i}]"
        threshold = _number(row.get("threshold"), f"{where}['threshold']")
        if threshold is None:
            raise ReportError(f"summary {where}['threshold']: expected a number, found None")
        name = _threshold_name(threshold)
        pruned = row.get("channels_pruned")
        pruned = None if pruned is None else int(_number(pruned, f"{where}['channels_pruned']"))
        fraction = _number(row.get("fraction_pruned"), f"{where}['fraction_pruned']")
        if fraction is None and pruned is not None and channels:
            fraction = pruned / channels
        reached = row.get("reached", True)
        repaired = _mapping(row.get("repaired"), f"{where}['repaired']")
        common = {"model": "", "threshold": threshold, "channels_pruned": pruned,
                  "fraction_pruned": fraction}
        b_prime = _network_row(common, f"B'_{name}", row, repaired, where)
        label = f"B'_{name}" + ("" if reached else " (not reached)")
        out.append((b_prime, {"label": label, "kind": "repaired", "channels": channels}))
        suffix = "" if reached else " (not reached)"
        if row.get("goodnet") is not None:
            out.append(_goodnet_row(common, f"G_{name}", row["goodnet"], f"{where}['goodnet']",
                                    suffix, "goodnet", channels))
        if row.get("fine_tuned") is not None:
            out.extend(_fine_tuned_rows(row["fine_tuned"], common, name, where, suffix,
                                        channels))
    return out


def _network_row(common: dict, model: str, row: Mapping, repaired: Mapping, where: str) -> dict:
    """The CSV row of a repaired network (B' or B''): its own scores, no GoodNet rates."""
    return dict(
        common,
        model=model,
        valid_accuracy=_number(row.get("valid_accuracy"), f"{where}['valid_accuracy']"),
        test_accuracy=_number(
            repaired.get("test_accuracy"), f"{where}['repaired']['test_accuracy']"
        ),
        attack_success=_number(
            repaired.get("attack_success"), f"{where}['repaired']['attack_success']"
        ),
        detection_rate=None,
        false_alarm_rate=None,
    )


def _goodnet_row(common: dict, model: str, raw: Any, where: str, suffix: str, kind: str,
                 channels) -> tuple[dict, dict]:
    good = _mapping(raw, where)
    g_row = dict(common, model=model, valid_accuracy=None)
    for key in _OPTIONAL_COLUMNS:
        g_row[key] = _number(good.get(key), f"{where}[{key!r}]")
    return g_row, {"label": model + suffix, "kind": kind, "channels": channels}


def _fine_tuned_rows(raw: Any, common: dict, name: str, where: str, suffix: str,
                     channels) -> list[tuple[dict, dict]]:
    """B''_X (B'_X fine-tuned) and, when measured, G''_X (the GoodNet of B and B''_X)."""
    where = f"{where}['fine_tuned']"
    tuned = _mapping(raw, where)
    repaired = _mapping(tuned.get("repaired"), f"{where}['repaired']")
    b_second = _network_row(common, f"B''_{name}", tuned, repaired, where)
    out = [(b_second, {"label": f"B''_{name}" + suffix, "kind": "fine_tuned",
                       "channels": channels})]
    if tuned.get("goodnet") is not None:
        out.append(_goodnet_row(common, f"G''_{name}", tuned["goodnet"], f"{where}['goodnet']",
                                suffix, "goodnet fine_tuned", channels))
    return out


def csv_rows(summary: Mapping) -> list[dict]:
    """The report as flat rows, one per model: B, then B'_X and (when measured) G_X per X.

    When B'_X was fine-tuned, B''_X (and, when measured, G''_X: the GoodNet of B and
    B''_X) follow G_X; their `channels_pruned` is that of B'_X and their
    `valid_accuracy` that of B''_X.

    Args:
        summary: the repair summary (see the module docstring).

    Returns:
        A list of dicts with the keys of `CSV_COLUMNS`; numbers are floats (channel counts
        ints), `None` where not measured. B has `threshold` None and 0 channels pruned.

    Example:

    >>> [r["model"] for r in csv_rows(summary)]
    ['B', "B'_2", 'G_2', "B'_4", 'G_4']
    """
    return [row for row, _ in _model_rows(summary)]


def csv_text(summary: Mapping) -> str:
    """`csv_rows` as CSV text with a header line; `None` becomes an empty field.

    Args:
        summary: the repair summary.

    Returns:
        The CSV document (columns `CSV_COLUMNS`).

    Example:

    >>> Path("report.csv").write_text(csv_text(summary))
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(summary):
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    return buffer.getvalue()


def _table(summary: Mapping) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, text cells and row kinds of the results table (shared by Markdown and HTML)."""
    rows = _model_rows(summary)
    columns = ["model", "threshold", "channels_pruned", "fraction_pruned", "valid_accuracy"]
    columns += [c for c in _OPTIONAL_COLUMNS if any(r[c] is not None for r, _ in rows)]
    headers = [_HEADERS[c] for c in columns]
    if summary.get("relative"):
        headers[1] = "X (% of baseline)"
    cells: list[list[str]] = []
    for row, info in rows:
        line = []
        for column in columns:
            value = row[column]
            if column == "model":
                text = info["label"]
            elif value is None:
                text = _MISSING
            elif column == "threshold":
                text = _threshold_name(value)
            elif column == "channels_pruned":
                text = f"{value} of {info['channels']}" if info["channels"] else str(value)
            elif column == "fraction_pruned":
                text = f"{value:.3f}"
            else:
                text = f"{value:.2f}"
            line.append(text)
        cells.append(line)
    return headers, cells, [info["kind"] for _, info in rows]


def _warnings(summary: Mapping) -> list[str]:
    return [str(w) for w in _list(summary, "warnings")]


def markdown_table(summary: Mapping) -> str:
    """The results as a Markdown table, with the warnings listed under it.

    Rows: "B (original)", then B'_X (and G_X when measured) for each threshold X, and
    B''_X and G''_X after them when B'_X was fine-tuned (see `fine_pruning_table`).
    Columns: X, channels pruned ("k of C"), fraction pruned, validation accuracy of B' and,
    only when some model has them, clean test accuracy, attack success rate, and G's
    detection rate (poisoned inputs flagged) and false-alarm rate (clean inputs flagged).
    Percentages have 2 decimals; "—" marks a value that was not measured.

    Args:
        summary: the repair summary (see the module docstring).

    Returns:
        The Markdown text, ending with a newline.

    Example:

    >>> print(markdown_table(summary))
    | Model | X (points) | Channels pruned | ...
    """
    headers, cells, _ = _table(summary)

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = [line(headers), "| " + " | ".join(align) + " |"] + [line(c) for c in cells]
    warnings = _warnings(summary)
    if warnings:
        lines += ["", "**Warnings**", ""]
        lines += ["- " + " ".join(w.split()) for w in warnings]
    return "\n".join(lines) + "\n"


def _settings(summary: Mapping) -> str:
    """One sentence describing the pruned network and the pruning settings."""
    parts = []
    if summary.get("model"):
        parts.append(f"network {summary['model']}")
    if summary.get("layer"):
        layer = f"channels of {summary['layer']}"
        if summary.get("channels"):
            layer += f" ({summary['channels']} channels)"
        parts.append(layer + " pruned")
    if summary.get("order"):
        parts.append(f"{summary['order']} order of mean activation on clean validation data")
    if summary.get("num_classes"):
        parts.append(f"{summary['num_classes']} classes (GoodNet: one more for 'backdoored')")
    threshold = "relative (% of baseline)" if summary.get("relative") else "absolute (points)"
    parts.append(f"threshold X {threshold}")
    if summary.get("keep"):
        parts.append(f"kept: {summary['keep']}")
    text = "; ".join(parts) + "."
    tuning = _mapping(summary.get("fine_tune"), "['fine_tune']")
    if tuning:
        epochs = tuning.get("epochs")
        how = []
        if tuning.get("learning_rate") is not None:
            rate = _number(tuning["learning_rate"], "['fine_tune']['learning_rate']")
            how.append(f"Adam, learning rate {rate:g} cosine-decayed to 0")
        if tuning.get("images") is not None:
            how.append(f"{tuning['images']} images")
        data = f" on {tuning['data']}" if tuning.get("data") else ""
        text += (f" B''_X is B'_X fine-tuned for {epochs} epochs{data}"
                 + (f" ({', '.join(how)})" if how else "")
                 + " with the pruned channels kept at zero; G''_X is the GoodNet of B and "
                 "B''_X.")
        if tuning.get("data") == "the validation data":
            text += " B''_X's validation accuracy is measured on the data it was tuned on."
    return text


def _files(summary: Mapping) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    for i, raw in enumerate(_list(summary, "rows")):
        row = _mapping(raw, f"['rows'][{i}]")
        files = _mapping(row.get("files"), f"['rows'][{i}]['files']")
        entries = [(str(k), str(v)) for k, v in files.items() if v]
        if entries:
            threshold = _number(row.get("threshold"), f"['rows'][{i}]['threshold']")
            out.append((f"X = {_threshold_name(threshold)}", entries))
        if row.get("fine_tuned") is not None:
            where = f"['rows'][{i}]['fine_tuned']"
            tuned = _mapping(row["fine_tuned"], where)
            files = _mapping(tuned.get("files"), f"{where}['files']")
            entries = [(str(k), str(v)) for k, v in files.items() if v]
            if entries:
                threshold = _number(row.get("threshold"), f"['rows'][{i}]['threshold']")
                out.append((f"X = {_threshold_name(threshold)}, fine-tuned", entries))
    return out


_COMPARISON = (
    ("B'", "repaired", "test_accuracy"), ("B'", "repaired", "attack_success"),
    ("B''", "repaired", "test_accuracy"), ("B''", "repaired", "attack_success"),
    ("G", "goodnet", "test_accuracy"), ("G", "goodnet", "attack_success"),
    ("G''", "goodnet", "test_accuracy"), ("G''", "goodnet", "attack_success"),
)


def _comparison(summary: Mapping) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of `fine_pruning_table` (no cells when nothing was fine-tuned)."""
    summary = _check_summary(summary)
    channels = summary.get("channels")
    headers = ["X (% of baseline)" if summary.get("relative") else "X (points)",
               "Channels pruned"]
    headers += [f"{model} {'clean accuracy' if key == 'test_accuracy' else 'attack success'} (%)"
                for model, _, key in _COMPARISON]
    cells = []
    for i, raw in enumerate(_list(summary, "rows")):
        row = _mapping(raw, f"['rows'][{i}]")
        where = f"['rows'][{i}]"
        if row.get("fine_tuned") is None:
            continue
        tuned = _mapping(row["fine_tuned"], f"{where}['fine_tuned']")
        threshold = _number(row.get("threshold"), f"{where}['threshold']")
        if threshold is None:
            raise ReportError(f"summary {where}['threshold']: expected a number, found None")
        pruned = row.get("channels_pruned")
        line = [_threshold_name(threshold) + ("" if row.get("reached", True) else
                                              " (not reached)"),
                _MISSING if pruned is None else (
                    f"{int(pruned)} of {channels}" if channels else str(int(pruned)))]
        for model, part, key in _COMPARISON:
            source, at = (tuned, f"{where}['fine_tuned']") if "''" in model else (row, where)
            scores = _mapping(source.get(part), f"{at}[{part!r}]")
            value = _number(scores.get(key), f"{at}[{part!r}][{key!r}]")
            line.append(_MISSING if value is None else f"{value:.2f}")
        cells.append(line)
    return headers, cells


def fine_pruning_table(summary: Mapping) -> str:
    """Pruning only vs fine-pruning, one line per threshold X, as a Markdown table.

    Columns: X, channels pruned, then clean test accuracy and attack success rate of B'_X
    (pruned only), B''_X (pruned, then fine-tuned), G_X (GoodNet of B and B'_X) and G''_X
    (GoodNet of B and B''_X). Only thresholds whose row has a `fine_tuned` entry appear.

    Args:
        summary: the repair summary (see the module docstring).

    Returns:
        The Markdown table ending with a newline, or "" when nothing was fine-tuned.

    Example:

    >>> print(fine_pruning_table(summary))
    | X (points) | Channels pruned | B' clean accuracy (%) | ...
    """
    headers, cells = _comparison(summary)
    if not cells:
        return ""
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = [headers, align, *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def markdown_report(summary: Mapping) -> str:
    """The whole `report.md`: title, settings, `markdown_table` and the saved files.

    Args:
        summary: the repair summary.

    Returns:
        The Markdown document.

    Example:

    >>> Path("report.md").write_text(markdown_report(summary))
    """
    summary = _check_summary(summary)
    title = str(summary.get("title") or "keras-prune-guard repair report")
    parts = [f"# {title}", "", _settings(summary), "", markdown_table(summary).rstrip("\n")]
    comparison = fine_pruning_table(summary)
    if comparison:
        parts += ["", "## Pruning only vs fine-pruning", "", comparison.rstrip("\n")]
    files = _files(summary)
    if files:
        parts += ["", "## Saved networks", ""]
        for name, entries in files:
            parts.append(f"- {name}: " + ", ".join(f"{k} `{v}`" for k, v in entries))
    return "\n".join(parts) + "\n"


def _curve_points(summary: Mapping) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """(x, validation accuracy) and (x, attack success) points of the curve."""
    channels = summary.get("channels")
    xs, valid, attack = [], [], []
    for i, raw in enumerate(_list(summary, "curve")):
        point = _mapping(raw, f"['curve'][{i}]")
        x = _number(point.get("fraction_pruned"), f"['curve'][{i}]['fraction_pruned']")
        if x is None:
            pruned = _number(point.get("channels_pruned"), f"['curve'][{i}]['channels_pruned']")
            x = pruned / channels if pruned is not None and channels else None
        acc = _number(point.get("valid_accuracy"), f"['curve'][{i}]['valid_accuracy']")
        asr = _number(point.get("attack_success"), f"['curve'][{i}]['attack_success']")
        if x is None:
            continue
        if acc is not None:
            xs.append(x)
            valid.append(acc)
        if asr is not None:
            attack.append((x, asr))
    return xs, valid, attack


def plot_curve(summary: Mapping, path: str | os.PathLike | io.IOBase) -> Path | None:
    """Draws the pruning curve as a PNG.

    Validation accuracy (and, when the curve has it, attack success rate on poisoned
    validation data) against the fraction of channels pruned; a dashed horizontal line at
    the accuracy floor of each threshold X (baseline - X, or baseline * (1 - X/100) when
    `summary["relative"]`), a dotted vertical line where each B'_X was taken. Uses
    `matplotlib.figure.Figure` with the Agg canvas, never `pyplot`.

    Args:
        summary: the repair summary; its `curve` must have at least one point.
        path: the `.png` file to write, or a binary file object.

    Returns:
        `Path(path)`, or None when `path` is a file object.

    Raises:
        ReportError: (a ValueError) when the curve has no point with a validation accuracy.

    Example:

    >>> plot_curve(summary, "pruning_curve.png")
    PosixPath('pruning_curve.png')
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = _check_summary(summary)
    xs, valid, attack = _curve_points(summary)
    if not xs:
        raise ReportError(
            "summary['curve']: expected at least one point with 'valid_accuracy' and "
            "'fraction_pruned' (or 'channels_pruned'), found none"
        )
    channels = summary.get("channels")
    baseline = _baseline_valid(summary)

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(xs, valid, color=VALID_COLOR, lw=2.2, marker="o", ms=3,
            label="validation accuracy (clean)")
    if attack:
        ax.plot([a[0] for a in attack], [a[1] for a in attack], color=ATTACK_COLOR, lw=2.2,
                marker="s", ms=3, label="attack success rate (poisoned validation)")
    for i, raw in enumerate(_list(summary, "rows")):
        row = _mapping(raw, f"['rows'][{i}]")
        threshold = _number(row.get("threshold"), f"['rows'][{i}]['threshold']")
        if threshold is None:
            continue
        color = _THRESHOLD_COLORS[i % len(_THRESHOLD_COLORS)]
        name = _threshold_name(threshold)
        if baseline is not None:
            floor = baseline * (1 - threshold / 100) if summary.get("relative") else (
                baseline - threshold)
            ax.axhline(floor, color=color, ls="--", lw=1, label=f"floor for X = {name}")
        fraction = _number(row.get("fraction_pruned"), f"['rows'][{i}]['fraction_pruned']")
        pruned = row.get("channels_pruned")
        if fraction is None and pruned is not None and channels:
            fraction = pruned / channels
        if fraction is not None:
            reached = row.get("reached", True)
            ax.axvline(fraction, color=color, ls=":", lw=1.5,
                       label=f"B'_{name} taken" + ("" if reached else " (X not reached)"))
    ax.set_xlabel("fraction of channels pruned"
                  + (f" (of {channels} in {summary.get('layer') or 'the layer'})"
                     if channels else ""))
    ax.set_ylabel("accuracy / attack success rate (%)")
    ax.set_xlim(0, max(1.0, max(xs)))
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    if channels:
        top = ax.secondary_xaxis(
            "top", functions=(lambda f: f * channels, lambda k: k / channels)
        )
        top.set_xlabel("channels pruned")
    title = f"Pruning {summary.get('layer') or 'the layer'}"
    if summary.get("model"):
        title += f" of {summary['model']}"
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return None if isinstance(path, io.IOBase) else Path(path)


def _data_uri(path: Path) -> str:
    """The file as a base64 `data:` URI (its type taken from the suffix)."""
    mime = _IMAGE_TYPES[path.suffix.lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _check_images(images: Mapping[str, Any] | None, argument: str) -> dict[str, Path]:
    out = {}
    for name, path in _mapping(images, argument).items():
        path = Path(path)
        if path.suffix.lower() not in _IMAGE_TYPES:
            raise ReportError(
                f"{argument}[{name!r}] = {str(path)!r}: unsupported file type "
                f"{path.suffix!r}, expected one of {sorted(_IMAGE_TYPES)}"
            )
        if not path.is_file():
            raise ReportError(f"{argument}[{name!r}] = {str(path)!r}: no such file")
        out[str(name)] = path
    return out


def render_html(summary: Mapping, images: Mapping[str, str | os.PathLike] | None = None) -> str:
    """A self-contained HTML page: title, settings, table, pruning curve, figures, warnings.

    Images are inlined as base64 `data:` URIs and the CSS is inline, so the page loads no
    external resource (its Content-Security-Policy forbids any). The pruning curve is taken
    from `images[CURVE_FIGURE]` when given, else drawn in memory; every other entry of
    `images` is shown as an extra figure captioned by its key.

    Args:
        summary: the repair summary.
        images: caption -> image file (.png, .jpg, .gif, .webp, .svg), e.g.
            `{"Saliency": "saliency.png"}`. Defaults to no extra figure.

    Returns:
        The HTML document.

    Raises:
        ReportError: (a ValueError) when an image file is missing or of an unsupported type.

    Example:

    >>> Path("report.html").write_text(render_html(summary, {"Saliency": "saliency.png"}))
    """
    summary = _check_summary(summary)
    images = _check_images(images, "images")
    esc = html.escape
    title = str(summary.get("title") or "keras-prune-guard repair report")
    headers, cells, kinds = _table(summary)

    table = ["<table>", "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers)
             + "</tr></thead>", "<tbody>"]
    for kind, line in zip(kinds, cells):
        table.append(f'<tr class="{kind}">' + "".join(f"<td>{esc(c)}</td>" for c in line)
                     + "</tr>")
    table += ["</tbody>", "</table>"]

    if CURVE_FIGURE in images:
        curve_uri = _data_uri(images.pop(CURVE_FIGURE))
    else:
        buffer = io.BytesIO()
        plot_curve(summary, buffer)
        curve_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    figures = [(CURVE_FIGURE, curve_uri)] + [(n, _data_uri(p)) for n, p in images.items()]

    body = [f"<h1>{esc(title)}</h1>", f'<p class="meta">{esc(_settings(summary))}</p>',
            "<h2>Results</h2>", *table]
    comparison_headers, comparison_cells = _comparison(summary)
    if comparison_cells:
        body += ["<h2>Pruning only vs fine-pruning</h2>", '<table class="comparison">',
                 "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in comparison_headers)
                 + "</tr></thead>", "<tbody>"]
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>"
                 for line in comparison_cells]
        body += ["</tbody>", "</table>"]
    for name, uri in figures:
        body += [f"<h2>{esc(name)}</h2>", "<figure>",
                 f'<img src="{uri}" alt="{esc(name, quote=True)}">', "</figure>"]
    files = _files(summary)
    if files:
        body += ["<h2>Saved networks</h2>", "<ul>"]
        for name, entries in files:
            body.append(f"<li>{esc(name)}: " + ", ".join(
                f"{esc(k)} <code>{esc(v)}</code>" for k, v in entries) + "</li>")
        body.append("</ul>")
    warnings = _warnings(summary)
    if warnings:
        body += ['<section class="warnings">', "<h2>Warnings</h2>", "<ul>"]
        body += [f"<li>{esc(w)}</li>" for w in warnings]
        body += ["</ul>", "</section>"]
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        _CSP,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
    ]
    return "\n".join(head + body + ["</main>", "</body>", "</html>"]) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def summary_json(summary: Mapping) -> str:
    """The whole summary (curve included) as strict JSON; numpy scalars and paths converted.

    Args:
        summary: the repair summary.

    Returns:
        Indented JSON text.

    Raises:
        ReportError: (a ValueError) when the summary holds a value JSON cannot represent
            (NaN, arbitrary objects).

    Example:

    >>> json.loads(summary_json(summary)) == summary
    True
    """
    summary = _check_summary(summary)
    try:
        return json.dumps(summary, indent=2, allow_nan=False, default=_json_default) + "\n"
    except (TypeError, ValueError) as error:
        raise ReportError(f"summary: cannot be written as JSON: {error}") from None


def write_report(
    summary: Mapping,
    out_dir: str | os.PathLike,
    *,
    figures: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Path]:
    """Writes report.md, report.csv, report.json, pruning_curve.png and report.html.

    Each file goes through `atomic_path`, so a failed run never leaves a half-written file.
    The summary, JSON encoding and figure files are checked before anything is written.

    Args:
        summary: the repair summary.
        out_dir: the folder to write into (created when missing).
        figures: extra figures for the HTML page, caption -> image file,
            e.g. `{"Saliency": "saliency.png"}`. Defaults to none.

    Returns:
        The written paths by kind: keys "md", "csv", "json", "png", "html".

    Raises:
        ReportError: (a ValueError) when the summary is malformed or a figure file is missing.

    Example:

    >>> write_report(summary, "saved_models/report")["html"]
    PosixPath('saved_models/report/report.html')
    """
    summary = _check_summary(summary)
    figures = _check_images(figures, "figures")
    if CURVE_FIGURE in figures:
        raise ReportError(
            f"figures: the caption {CURVE_FIGURE!r} is reserved for the pruning curve, "
            f"found it among {sorted(figures)}"
        )
    # Build every text first so that a bad summary fails before any file is replaced.
    texts = {
        "md": markdown_report(summary),
        "csv": csv_text(summary),
        "json": summary_json(summary),
    }
    out_dir = Path(out_dir)
    paths = {
        "md": out_dir / "report.md",
        "csv": out_dir / "report.csv",
        "json": out_dir / "report.json",
        "png": out_dir / "pruning_curve.png",
        "html": out_dir / "report.html",
    }
    with atomic_path(paths["png"]) as tmp:
        plot_curve(summary, tmp)
    for kind, text in texts.items():
        with atomic_path(paths[kind]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    page = render_html(summary, {CURVE_FIGURE: paths["png"], **figures})
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return paths


__all__ = [
    "ATTACK_COLOR",
    "CSV_COLUMNS",
    "CURVE_FIGURE",
    "VALID_COLOR",
    "ReportError",
    "csv_rows",
    "csv_text",
    "fine_pruning_table",
    "markdown_report",
    "markdown_table",
    "plot_curve",
    "render_html",
    "summary_json",
    "write_report",
]

