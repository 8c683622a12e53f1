"""The results as rows: CSV, Markdown tables and the Markdown report."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass

from keras_prune_guard.results import Detection, RepairResult, Scores, ThresholdResult

CSV_COLUMNS = (
    "model",
    "threshold",
    "num_pruned",
    "fraction_pruned",
    "valid_accuracy",
    "test_accuracy",
    "attack_success",
    "robust_accuracy",
    "detection_rate",
    "false_alarm_rate",
)
"""The columns of `csv_rows` and `report.csv`, in order (the `RepairResult` field names)."""

# Columns shown only when at least one model has a value for them.
_OPTIONAL_COLUMNS = ("test_accuracy", "attack_success", "robust_accuracy", "detection_rate",
                     "false_alarm_rate")
_HEADERS = {
    "model": "Model",
    "threshold": "X (points)",
    "num_pruned": "Channels pruned",
    "fraction_pruned": "Fraction pruned",
    "valid_accuracy": "Validation accuracy (%)",
    "test_accuracy": "Clean test accuracy (%)",
    "attack_success": "Attack success rate (%)",
    "robust_accuracy": "Robust accuracy R-Acc (%)",
    "detection_rate": "Detection rate (%)",
    "false_alarm_rate": "False alarm rate (%)",
}
MISSING = "—"


def as_result(result: RepairResult | Mapping) -> RepairResult:
    """`result` itself, or a dict (report.json, a 0.1 summary) read and checked."""
    return result if isinstance(result, RepairResult) else RepairResult.from_dict(result)


def threshold_name(threshold: float) -> str:
    return f"{threshold:g}"


@dataclass
class Line:
    """One model's row: its CSV values, its label and its kind (a CSS class in HTML)."""

    values: dict
    label: str
    kind: str


def _values(model: str, threshold, pruned: int, fraction: float, valid, scores: Scores | None,
            goodnet: bool) -> dict:
    scores = scores or Scores()
    return {
        "model": model, "threshold": threshold, "num_pruned": pruned,
        "fraction_pruned": fraction, "valid_accuracy": valid,
        "test_accuracy": scores.test_accuracy, "attack_success": scores.attack_success,
        "robust_accuracy": scores.robust_accuracy,
        "detection_rate": scores.detection_rate if goodnet else None,
        "false_alarm_rate": scores.false_alarm_rate if goodnet else None,
    }


def _row_lines(row: ThresholdResult) -> list[Line]:
    """B'_X, G_X (when scored), B''_X and G''_X (when fine-tuned) for one threshold."""
    name = threshold_name(row.threshold)
    suffix = "" if row.reached else " (not reached)"
    common = (row.threshold, row.num_pruned, row.fraction_pruned)
    lines = [Line(_values(f"B'_{name}", *common, row.valid_accuracy, row.repaired, False),
                  f"B'_{name}{suffix}", "repaired")]
    if row.goodnet is not None:
        lines.append(Line(_values(f"G_{name}", *common, None, row.goodnet, True),
                          f"G_{name}{suffix}", "goodnet"))
    tuned = row.fine_tuned
    if tuned is not None:
        kept = kept_b_prime(tuned)
        suffix += " (kept B')" if kept else ""
        b_second, g_second = fine_pruned_scores(row)
        valid = row.valid_accuracy if kept else tuned.valid_accuracy
        lines.append(Line(_values(f"B''_{name}", *common, valid, b_second, False),
                          f"B''_{name}{suffix}", "fine_tuned"))
        if g_second is not None:
            lines.append(Line(_values(f"G''_{name}", *common, None, g_second, True),
                              f"G''_{name}{suffix}", "goodnet fine_tuned"))
    return lines


def kept_b_prime(tuned) -> bool:
    """Whether fine-pruning kept B' (too little clean data, or no schedule helped)."""
    return tuned.choice is not None and tuned.choice.kept_b_prime


def fine_pruned_scores(row: ThresholdResult) -> tuple[Scores | None, Scores | None]:
    """B''_X's and G''_X's scores: B'_X's and G_X's where fine-pruning kept B'."""
    if kept_b_prime(row.fine_tuned):
        return row.repaired, row.goodnet
    return row.fine_tuned.repaired, row.fine_tuned.goodnet


def lines(result: RepairResult) -> list[Line]:
    """One line per model: B, then B'_X (G_X, B''_X, G''_X) per threshold."""
    base = result.baseline
    original = _values("B", None, 0, 0.0, base.valid_accuracy,
                       Scores(base.test_accuracy, base.attack_success,
                              robust_accuracy=base.robust_accuracy), False)
    out = [Line(original, "B (original)", "original")]
    for row in result.rows:
        out.extend(_row_lines(row))
    return out


def csv_rows(result: RepairResult | Mapping) -> list[dict]:
    """The report as flat rows, one per model: B, then B'_X and (when measured) G_X per X.

    When B'_X was fine-tuned, B''_X (and, when measured, G''_X: the GoodNet of B and
    B''_X) follow G_X; their `num_pruned` is that of B'_X and their `valid_accuracy`
    that of B''_X.

    Args:
        result: the `RepairResult` (or its dict form).

    Returns:
        A list of dicts with the keys of `CSV_COLUMNS`; `None` where not measured. B has
        `threshold` None and 0 channels pruned.

    Example:

    >>> [r["model"] for r in csv_rows(result)]
    ['B', "B'_2", 'G_2', "B'_4", 'G_4']
    """
    return [line.values for line in lines(as_result(result))]


def csv_text(result: RepairResult | Mapping) -> str:
    """`csv_rows` as CSV text with a header line; `None` becomes an empty field.

    Example:

    >>> Path("report.csv").write_text(csv_text(result))
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(result):
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    return buffer.getvalue()


def _cell(column: str, value, line: Line, channels: int) -> str:
    if column == "model":
        return line.label
    if value is None:
        return MISSING
    if column == "threshold":
        return threshold_name(value)
    if column == "num_pruned":
        return f"{value} of {channels}" if channels else str(value)
    if column == "fraction_pruned":
        return f"{value:.3f}"
    return f"{value:.2f}"


def table(result: RepairResult) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, text cells and row kinds of the results table (Markdown and HTML)."""
    rows = lines(result)
    columns = ["model", "threshold", "num_pruned", "fraction_pruned", "valid_accuracy"]
    columns += [c for c in _OPTIONAL_COLUMNS if any(r.values[c] is not None for r in rows)]
    headers = [_HEADERS[c] for c in columns]
    if result.config.relative:
        headers[1] = "X (% of baseline)"
    cells = [[_cell(c, line.values[c], line, result.channels) for c in columns] for line in rows]
    return headers, cells, [line.kind for line in rows]


def markdown_lines(headers: list[str], cells: list[list[str]]) -> list[str]:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    align = ["---"] + ["---:"] * (len(headers) - 1)
    return [line(headers), "| " + " | ".join(align) + " |"] + [line(c) for c in cells]


def markdown_table(result: RepairResult | Mapping) -> str:
    """The results as a Markdown table, with the warnings listed under it.

    Rows: "B (original)", then B'_X (and G_X when measured) for each threshold X, and
    B''_X and G''_X after them when B'_X was fine-tuned (see `fine_pruning_table`).
    Columns: X, channels pruned ("k of C"), fraction pruned, validation accuracy and,
    only when some model has them, clean test accuracy, attack success rate, and G's
    detection rate (poisoned inputs flagged) and false-alarm rate (clean inputs flagged).
    Percentages have 2 decimals; "—" marks a value that was not measured.

    Example:

    >>> print(markdown_table(result))
    | Model | X (points) | Channels pruned | ...
    """
    result = as_result(result)
    headers, cells, _ = table(result)
    out = markdown_lines(headers, cells)
    if result.warnings:
        out += ["", "**Warnings**", ""]
        out += ["- " + " ".join(w.split()) for w in result.warnings]
    return "\n".join(out) + "\n"


def settings(result: RepairResult) -> str:
    """One paragraph describing the pruned network and the settings."""
    config = result.config
    parts = []
    if result.model:
        parts.append(f"network {result.model}")
    if result.layer:
        channels = f" ({result.channels} channels)" if result.channels else ""
        parts.append(f"channels of {result.layer}{channels} pruned")
    defense = result.defense
    if defense is not None and defense.learns_masks:
        took = "" if result.defense_seconds is None else f", {result.defense_seconds:.0f} s"
        parts.append(f"{config.order} order of the {defense.method.upper()} mask learnt per "
                     f"channel on clean data ({took.lstrip(', ') or 'time not recorded'})")
    else:
        parts.append(f"{config.order} order of mean activation on clean validation data")
    if result.num_classes:
        parts.append(f"{result.num_classes} classes (GoodNet: one more for 'backdoored')")
    kind = "relative (% of baseline)" if config.relative else "absolute (points)"
    parts.append(f"threshold X {kind}")
    parts.append(f"kept: {config.keep}")
    text = "; ".join(parts) + "."
    tuning = result.fine_tune
    if tuning is not None:
        if tuning.learning_rate is None:
            how = [f"Adam; schedule chosen on {tuning.holdout:.0%} of the clean data held out, "
                   f"the most aggressive of {', '.join(tuning.schedules)} within "
                   f"{tuning.tolerance:g} points of B's held-out accuracy"]
        else:
            how = [f"Adam, learning rate {tuning.learning_rate:g} cosine-decayed to 0"]
        if result.fine_tune_images is not None:
            how.append(f"{result.fine_tune_images} images")
        data = f" on {result.fine_tune_data}" if result.fine_tune_data else ""
        up_to = "up to " if tuning.learning_rate is None else ""
        text += (f" B''_X is B'_X fine-tuned for {up_to}{tuning.epochs} epochs{data} "
                 f"({', '.join(how)}) with the pruned channels kept at zero; G''_X is the "
                 "GoodNet of B and B''_X.")
        if result.fine_tune_data == "the validation data":
            text += " B''_X's validation accuracy is measured on the clean data it was tuned on."
    return text


def choices(result: RepairResult) -> list[str]:
    """One line per threshold: what fine-pruning chose on clean data, and why."""
    out = []
    for row in result.rows:
        choice = row.fine_tuned.choice if row.fine_tuned is not None else None
        if choice is None:
            continue
        tried = ", ".join(f"{c.schedule} {c.holdout_accuracy:.2f}% (epoch {c.epoch})"
                          for c in choice.candidates)
        picked = "kept B'" if choice.kept_b_prime else f"{choice.schedule}, epoch {choice.epoch}"
        held = "" if choice.reference_accuracy is None else (
            f"; held-out accuracy of B {choice.reference_accuracy:.2f}%, of B' "
            f"{choice.pruned_accuracy:.2f}% on {choice.holdout_images} images")
        out.append(f"X = {threshold_name(row.threshold)}: {picked}: {choice.reason}{held}"
                   + (f"; tried {tried}" if tried else ""))
    return out


def saved_files(result: RepairResult) -> list[tuple[str, list[tuple[str, str]]]]:
    """(caption, [(kind, path)]) of the networks written, per threshold."""
    out = []
    for row in result.rows:
        name = f"X = {threshold_name(row.threshold)}"
        if row.files:
            out.append((name, list(row.files.items())))
        if row.fine_tuned is not None and row.fine_tuned.files:
            out.append((f"{name}, fine-tuned", list(row.fine_tuned.files.items())))
    return out


_COMPARISON = (
    ("B'", "test_accuracy"), ("B'", "attack_success"),
    ("B''", "test_accuracy"), ("B''", "attack_success"),
    ("G", "test_accuracy"), ("G", "attack_success"),
    ("G''", "test_accuracy"), ("G''", "attack_success"),
)


def _comparison_scores(row: ThresholdResult, model: str) -> Scores | None:
    b_second, g_second = fine_pruned_scores(row)
    return {"B'": row.repaired, "G": row.goodnet, "B''": b_second, "G''": g_second}[model]


_LABELS = {"test_accuracy": "clean accuracy", "attack_success": "attack success",
           "robust_accuracy": "R-Acc"}


def _comparison_columns(result: RepairResult) -> tuple:
    """`_COMPARISON`, plus B' and B'' robust accuracy when some row has it."""
    robust = any((_comparison_scores(row, m) or Scores()).robust_accuracy is not None
                 for row in result.rows if row.fine_tuned is not None for m in ("B'", "B''"))
    return _COMPARISON + ((("B'", "robust_accuracy"), ("B''", "robust_accuracy"))
                          if robust else ())


def comparison(result: RepairResult) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of `fine_pruning_table` (no cells when nothing was fine-tuned)."""
    columns = _comparison_columns(result)
    headers = ["X (% of baseline)" if result.config.relative else "X (points)",
               "Channels pruned"]
    headers += [f"{model} {_LABELS[key]} (%)" for model, key in columns]
    cells = []
    for row in result.rows:
        if row.fine_tuned is None:
            continue
        line = [threshold_name(row.threshold) + ("" if row.reached else " (not reached)"),
                _cell("num_pruned", row.num_pruned, None, result.channels)]
        for model, key in columns:
            value = getattr(_comparison_scores(row, model) or Scores(), key)
            line.append(MISSING if value is None else f"{value:.2f}")
        cells.append(line)
    return headers, cells


def fine_pruning_table(result: RepairResult | Mapping) -> str:
    """Pruning only vs fine-pruning, one line per threshold X, as a Markdown table.

    Columns: X, channels pruned, then clean test accuracy and attack success rate of B'_X
    (pruned only), B''_X (pruned, then fine-tuned), G_X (GoodNet of B and B'_X) and G''_X
    (GoodNet of B and B''_X), and, when measured, the robust accuracy (R-Acc) of B'_X and
    B''_X. Only fine-tuned thresholds appear.

    Returns:
        The Markdown table ending with a newline, or "" when nothing was fine-tuned.

    Example:

    >>> print(fine_pruning_table(result))
    | X (points) | Channels pruned | B' clean accuracy (%) | ...
    """
    headers, cells = comparison(as_result(result))
    if not cells:
        return ""
    align = ["---"] + ["---:"] * (len(headers) - 1)
    return "\n".join("| " + " | ".join(line) + " |" for line in [headers, align, *cells]) + "\n"


# ----- detection ----------------------------------------------------------------------------

DETECTION_COLUMNS = (
    "detector",
    "method",
    "score",
    "false_alarm",
    "threshold",
    "calibration_images",
    "false_alarm_rate",
    "detection_rate",
    "detection_rate_fooled",
    "auroc",
    "detection_at_1",
    "detection_at_5",
)
"""The columns of `detection_rows` and `detection.csv`: "detector" (G_2, G''_2, STRIP),
then the `results.Detection` field names (its ROC points are in report.json only)."""

_DETECTION_HEADERS = {
    "detector": "Detector",
    "score": "Score",
    "false_alarm": "Budget (%)",
    "threshold": "Threshold",
    "calibration_images": "Calibration images",
    "false_alarm_rate": "False alarm on clean test (%)",
    "detection_rate": "Detection, all triggered (%)",
    "detection_rate_fooled": "Detection, those fooling B (%)",
    "auroc": "AUROC",
    "detection_at_1": "Detection at 1% FA (%)",
    "detection_at_5": "Detection at 5% FA (%)",
}
STRIP_NAME = "STRIP"
"""How the detection table and the ROC figure name STRIP (on B)."""
DETECTION_NOTE = (
    "Each threshold was set on held-out clean images only, for the budget shown, so the "
    "false alarm on clean test and the detection columns at that threshold are the "
    "deployable figures; AUROC and the detection at 1% and 5% false alarm are read off the "
    "test ROC, each at its own threshold chosen on the test images, which a defender could "
    "not set.")
"""The sentence under the detection table (Markdown and HTML)."""


@dataclass
class Detector:
    """One detector of a result: its name, label, figures, row kind and threshold index.

    `name` is the CSV name (G_2, G''_2, STRIP); `label` adds "(not reached)" or
    "(kept B')" as the results table does; `index` is the position of its threshold X in
    `result.rows` (None for STRIP), which picks its colour in the ROC figure.
    """

    name: str
    label: str
    figures: Detection
    kind: str
    index: int | None = None


def _row_detectors(row: ThresholdResult, index: int) -> list[Detector]:
    """G_X and G''_X (G_X's figures where fine-pruning kept B'), when measured."""
    name = threshold_name(row.threshold)
    suffix = "" if row.reached else " (not reached)"
    out = []
    if row.detection is not None:
        out.append(Detector(f"G_{name}", f"G_{name}{suffix}", row.detection, "goodnet", index))
    tuned = row.fine_tuned
    if tuned is not None:
        kept = kept_b_prime(tuned)
        figures = row.detection if kept else tuned.detection
        if figures is not None:
            out.append(Detector(f"G''_{name}", f"G''_{name}{suffix}" + (
                " (kept B')" if kept else ""), figures, "goodnet fine_tuned", index))
    return out


def detectors(result: RepairResult | Mapping) -> list[Detector]:
    """Every detector with figures: G_X and G''_X per threshold X, then STRIP on B.

    Args:
        result: the `RepairResult` (or its dict form).

    Returns:
        A list of `Detector`s; empty for a result without detection figures (one
        written before 0.3, streamed test data, or `DetectConfig(false_alarm=0)`).
    """
    result = as_result(result)
    out = [d for i, row in enumerate(result.rows) for d in _row_detectors(row, i)]
    if result.strip is not None:
        out.append(Detector(STRIP_NAME, f"{STRIP_NAME} (on B)", result.strip, "strip"))
    return out


def detection_values(detector: Detector) -> dict:
    """The `DETECTION_COLUMNS` values of one detector (`None` where not measured)."""
    figures = detector.figures
    return {"detector": detector.name,
            **{c: getattr(figures, c) for c in DETECTION_COLUMNS[1:]}}


def detection_rows(result: RepairResult | Mapping) -> list[dict]:
    """The detection figures as flat rows, one per detector (see `detectors`).

    Args:
        result: the `RepairResult` (or its dict form).

    Returns:
        A list of dicts with the keys of `DETECTION_COLUMNS`: `false_alarm` and `auroc`
        are fractions, the rates percentages, `None` where not measured.

    Example:

    >>> [r["detector"] for r in detection_rows(result)]
    ['G_2', "G''_2", 'STRIP']
    """
    return [detection_values(d) for d in detectors(result)]


def detection_csv_text(result: RepairResult | Mapping) -> str:
    """`detection_rows` as CSV text with a header line (`None`: an empty field), or "".

    Example:

    >>> Path("detection.csv").write_text(detection_csv_text(result))
    """
    rows = detection_rows(result)
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DETECTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in DETECTION_COLUMNS})
    return buffer.getvalue()


def detection_cell(column: str, value) -> str:
    """One cell of the detection table: "—" where not measured.

    Budget and rates are percentages with 2 decimals, AUROC a fraction with 3, the
    threshold 4 significant digits.
    """
    if value is None:
        return MISSING
    if column in ("detector", "score", "calibration_images"):
        return str(value)
    if column == "false_alarm":
        return f"{value * 100:.2f}"
    if column == "threshold":
        return f"{value:.4g}"
    if column == "auroc":
        return f"{value:.3f}"
    return f"{value:.2f}"


def detection_headers() -> list[str]:
    """The headers of the detection table, in `_DETECTION_HEADERS` order."""
    return list(_DETECTION_HEADERS.values())


def detection_cells(detector: Detector) -> list[str]:
    """The text cells of one detector's line (its label first)."""
    values = detection_values(detector)
    return [detector.label] + [detection_cell(c, values[c]) for c in list(_DETECTION_HEADERS)[1:]]


def detection_table(result: RepairResult) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, text cells and row kinds of the detection table (no cells: no figures)."""
    found = detectors(result)
    return detection_headers(), [detection_cells(d) for d in found], [d.kind for d in found]


def strip_note(result: RepairResult) -> str:
    """How STRIP was run ("" without STRIP figures or settings)."""
    config = result.detect
    if result.strip is None or config is None:
        return ""
    return (f" STRIP flags an input when B's mean entropy over {config.strip_blends} blends "
            f"of it with clean images (its weight {config.strip_alpha:g}) is low.")


def detection_markdown(result: RepairResult | Mapping) -> str:
    """The "Detection" section of report.md: the table and the sentence under it.

    Returns:
        The Markdown text ending with a newline, or "" without detection figures.

    Example:

    >>> print(detection_markdown(result))
    ## Detection
    ...
    """
    result = as_result(result)
    headers, cells, _ = detection_table(result)
    if not cells:
        return ""
    parts = ["## Detection", "", *markdown_lines(headers, cells), "",
             DETECTION_NOTE + strip_note(result)]
    return "\n".join(parts) + "\n"


def markdown_report(result: RepairResult | Mapping) -> str:
    """The whole `report.md`: title, settings, `markdown_table` and the saved files.

    Example:

    >>> Path("report.md").write_text(markdown_report(result))
    """
    result = as_result(result)
    parts = [f"# {result.title}", "", settings(result), "", markdown_table(result).rstrip("\n")]
    compared = fine_pruning_table(result)
    if compared:
        parts += ["", "## Pruning only vs fine-pruning", "", compared.rstrip("\n")]
    detection = detection_markdown(result)
    if detection:
        parts += ["", detection.rstrip("\n")]
    chosen = choices(result)
    if chosen:
        parts += ["", "## What fine-pruning chose (on clean data only)", ""]
        parts += [f"- {line}" for line in chosen]
    files = saved_files(result)
    if files:
        parts += ["", "## Saved networks", ""]
        for name, entries in files:
            parts.append(f"- {name}: " + ", ".join(f"{k} `{v}`" for k, v in entries))
    return "\n".join(parts) + "\n"
