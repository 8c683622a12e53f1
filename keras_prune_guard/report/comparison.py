"""The benchmark matrix compared: one `RepairResult` per attack, side by side.

For each attack the original BadNet B, then per threshold X the pruned B'_X and its
GoodNet G_X, and (when fine-pruned) B''_X and G''_X, in one table; a "Detection" table
of each attack's detectors (G''_X, or G_X where nothing was fine-pruned, and STRIP) when
they were measured; a "Goal" section that checks fine-pruning against `GOAL`; one figure
with a panel per attack, and in the HTML page one with each attack's ROC curves. Written
as comparison.md, comparison.html, comparison.png and comparison.json (`write_comparison`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.report.plot import ATTACK_COLOR, VALID_COLOR, draw_roc, drawable
from keras_prune_guard.report.tables import (
    DETECTION_NOTE,
    Detector,
    as_result,
    detection_cells,
    detection_headers,
    detection_values,
    detectors,
    fine_pruned_scores,
    threshold_name,
)
from keras_prune_guard.results import RepairResult, ReportError, Scores, ThresholdResult

DEFAULT_TITLE = "keras-prune-guard benchmark: pruning defenses compared"
"""The title of `comparison_markdown` and `comparison_html` when none is given."""
MAX_ATTACK_SUCCESS = 5.0
"""Goal: B''_X's attack success rate must be below this (%)."""
MAX_ACCURACY_DROP = 3.0
"""Goal: B''_X's clean test accuracy may be at most this many points below B's."""
MIN_DETECTION = 90.0
"""Goal: G''_X must flag at least this share of the triggered images (%)."""
GOAL = (f"attack success < {MAX_ATTACK_SUCCESS:g}%, clean accuracy at most "
        f"{MAX_ACCURACY_DROP:g} points below B, G'' flags >= {MIN_DETECTION:g}% of "
        "triggered images")
"""The goal of fine-pruning, as the report states it."""
COMPARISON_FILES = {"md": "comparison.md", "html": "comparison.html",
                    "png": "comparison.png", "json": "comparison.json"}
"""The files `write_comparison` writes, by kind."""
PANEL_SIZE = (6.0, 4.5)
"""Width and height (inches) of one attack's panel in `plot_comparison`."""
PLOT_DPI = 100
"""Pixels per inch of `plot_comparison`'s PNG."""
MISSING = "—"
KEPT = "kept B'"
COLUMNS = ("Attack", "Model", "Channels pruned", "Clean acc.", "ASR", "R-Acc", "Detection",
           "False alarm", "Schedule")
"""The columns of the comparison table."""
_SCORES = ("test_accuracy", "attack_success", "robust_accuracy", "detection_rate",
           "false_alarm_rate")
_META_KEY = "meta"


def _checked(results: Mapping[str, RepairResult | Mapping]) -> dict[str, RepairResult]:
    """The results as `RepairResult`s (dicts are read), refusing an empty mapping."""
    if not isinstance(results, Mapping):
        raise ReportError(
            f"results: expected a dict attack -> RepairResult, found {type(results).__name__}")
    if not results:
        raise ReportError("results: expected at least one attack's RepairResult, found none")
    return {str(attack): as_result(result) for attack, result in results.items()}


def _schedule(row: ThresholdResult) -> str:
    choice = row.fine_tuned.choice if row.fine_tuned is not None else None
    if choice is None:
        return ""
    return KEPT if choice.schedule is None else choice.schedule


def _line(attack: str, model: str, defense: str, row: ThresholdResult | None,
          scores: Scores | None, schedule: str = "") -> dict:
    scores = scores or Scores()
    out = {"attack": attack, "model": model, "defense": defense,
           "threshold": None if row is None else row.threshold,
           "num_pruned": 0 if row is None else row.num_pruned,
           "fraction_pruned": 0.0 if row is None else row.fraction_pruned}
    out.update({key: getattr(scores, key) for key in _SCORES})
    return dict(out, schedule=schedule)


def _threshold_lines(attack: str, row: ThresholdResult) -> list[dict]:
    """B'_X, then G_X, B''_X and G''_X where present."""
    x = threshold_name(row.threshold)
    out = [_line(attack, f"B' X={x}", "pruning", row, row.repaired)]
    if row.goodnet is not None:
        out.append(_line(attack, f"G X={x}", "pruning", row, row.goodnet))
    if row.fine_tuned is not None:
        repaired, goodnet = fine_pruned_scores(row)
        out.append(_line(attack, f"B'' X={x}", "fine-pruning", row, repaired, _schedule(row)))
        if goodnet is not None:
            out.append(_line(attack, f"G'' X={x}", "fine-pruning", row, goodnet,
                             _schedule(row)))
    return out


def _attack_lines(attack: str, result: RepairResult) -> list[dict]:
    base = result.baseline
    original = Scores(test_accuracy=base.test_accuracy, attack_success=base.attack_success,
                      robust_accuracy=base.robust_accuracy)
    out = [_line(attack, "B", "none", None, original)]
    for row in result.rows:
        out.extend(_threshold_lines(attack, row))
    return out


def comparison_rows(results: Mapping[str, RepairResult]) -> list[dict]:
    """The comparison as flat rows: per attack, B, then B'_X, G_X, B''_X, G''_X per X.

    Args:
        results: attack name -> its `RepairResult` (or its dict form), in display order.

    Returns:
        One dict per (attack, model) with the keys attack, model ("B", "B' X=2",
        "G X=2", "B'' X=2", "G'' X=2"), defense ("none", "pruning", "fine-pruning"),
        threshold, num_pruned, fraction_pruned, test_accuracy, attack_success,
        robust_accuracy, detection_rate, false_alarm_rate (percentages, `None` where not
        measured) and schedule (the fine-tuning schedule chosen, "kept B'" when B' was
        kept, "" for models that were not fine-tuned).

    Raises:
        ReportError: (a ValueError) when `results` is empty or a result is malformed.

    Example:

    >>> [r["model"] for r in comparison_rows({"patch": result})]
    ['B', "B' X=2", 'G X=2', "B'' X=2", "G'' X=2"]
    """
    checked = _checked(results)
    return [line for attack, result in checked.items()
            for line in _attack_lines(attack, result)]


# ----- the goal -----------------------------------------------------------------------------


@dataclass
class _Verdict:
    """Whether B''_X / G''_X of one attack met `GOAL`, and the figures that decided it."""

    threshold: str
    status: str  # "met", "not met", "not measured" or "not fine-pruned"
    figures: str


def _measure(value: float | None, name: str, passed: Callable[[float], bool],
             text: Callable[[float, bool], str]) -> tuple[bool | None, str]:
    if value is None:
        return None, f"{name} not measured"
    return passed(value), text(value, passed(value))


def _criteria(base: float | None, tuned: Scores, goodnet: Scores) -> list[tuple[bool | None, str]]:
    asr = _measure(tuned.attack_success, "ASR", lambda v: v < MAX_ATTACK_SUCCESS,
                   lambda v, ok: f"ASR {v:.2f}% {'<' if ok else '>='} {MAX_ATTACK_SUCCESS:g}%")
    acc = tuned.test_accuracy
    drop = None if acc is None or base is None else base - acc
    clean = _measure(drop, "clean accuracy", lambda d: d <= MAX_ACCURACY_DROP,
                     lambda d, ok: f"clean accuracy {acc:.2f}% (B {base:.2f}%, drop {d:.2f} "
                                   f"{'<=' if ok else '>'} {MAX_ACCURACY_DROP:g} points)")
    found = _measure(goodnet.detection_rate, "G'' detection", lambda v: v >= MIN_DETECTION,
                     lambda v, ok: f"G'' detection {v:.2f}% {'>=' if ok else '<'} "
                                   f"{MIN_DETECTION:g}%")
    return [asr, clean, found]


def _verdict(result: RepairResult, row: ThresholdResult) -> _Verdict:
    x = threshold_name(row.threshold)
    if row.fine_tuned is None:
        return _Verdict(x, "not fine-pruned", "no B'' was built")
    repaired, goodnet = fine_pruned_scores(row)
    checks = _criteria(result.baseline.test_accuracy, repaired or Scores(), goodnet or Scores())
    passed = [ok for ok, _ in checks]
    status = "not met" if False in passed else "not measured" if None in passed else "met"
    return _Verdict(x, status, "; ".join(text for _, text in checks))


def _summary(verdicts: list[_Verdict]) -> str:
    """"met at X=2, 4; not met at X=10", statuses in the order they first appear."""
    groups: dict[str, list[str]] = {}
    for v in verdicts:
        groups.setdefault(v.status, []).append(v.threshold)
    if not groups:
        return "no threshold"
    return "; ".join(f"{status} at X={', '.join(xs)}" for status, xs in groups.items())


def _goals(results: dict[str, RepairResult]) -> dict[str, list[_Verdict]]:
    return {attack: [_verdict(result, row) for row in result.rows]
            for attack, result in results.items()}


# ----- detection ----------------------------------------------------------------------------

DETECTION_HEADERS = ("Attack", *detection_headers())
"""The columns of the comparison's detection table."""


def _label(detector: Detector, result: RepairResult) -> str:
    """The comparison's name of a detector: "G'' X=2", "G X=4 (not reached)", "STRIP (on B)"."""
    if detector.index is None:
        return detector.label
    row = result.rows[detector.index]
    model = "G''" if "fine_tuned" in detector.kind else "G"
    kept = " (kept B')" if detector.label.endswith("(kept B')") else ""
    return f"{model} X={threshold_name(row.threshold)}" + (
        "" if row.reached else " (not reached)") + kept


def default_detectors(result: RepairResult) -> list[Detector]:
    """The detectors an attack is judged by: per X, G''_X (G_X where it has no G''), then
    STRIP; each labelled as the comparison names its models."""
    found = detectors(result)
    tuned = {d.index for d in found if "fine_tuned" in d.kind}
    chosen = [d for d in found if d.index is None or "fine_tuned" in d.kind
              or d.index not in tuned]
    return [Detector(d.name, _label(d, result), d.figures, d.kind, d.index) for d in chosen]


def detection_comparison_rows(results: Mapping[str, RepairResult]) -> list[dict]:
    """The detection figures per attack as flat rows (see `default_detectors`).

    Args:
        results: attack name -> its `RepairResult` (or its dict form), in display order.

    Returns:
        One dict per (attack, detector) with the key "attack", then the keys of
        `tables.DETECTION_COLUMNS` ("detector": "G''_2", "G_4", "STRIP"); none when no
        attack has detection figures.

    Example:

    >>> [r["detector"] for r in detection_comparison_rows({"patch": result})]
    ["G''_2", "G''_4", 'STRIP']
    """
    return [{"attack": attack, **detection_values(d)}
            for attack, result in _checked(results).items()
            for d in default_detectors(result)]


def _detection_table(results: dict[str, RepairResult]) -> list[tuple[str, list[str]]]:
    """(row kind, cells) per line of the detection table."""
    return [(d.kind, [attack, *detection_cells(d)]) for attack, result in results.items()
            for d in default_detectors(result)]


DETECTION_NOTE_COMPARISON = (
    "Per threshold X the GoodNet of the fine-pruned network (G'') where one was built, "
    "else G, and STRIP on B. " + DETECTION_NOTE)
"""The sentence under the comparison's detection table."""


def _md_detection(results: dict[str, RepairResult]) -> list[str]:
    lines = _detection_table(results)
    if not lines:
        return []
    return ["## Detection", "", _md_row(list(DETECTION_HEADERS)),
            _md_row(["---"] * 3 + ["---:"] * (len(DETECTION_HEADERS) - 3)),
            *(_md_row(cells) for _, cells in lines), "", DETECTION_NOTE_COMPARISON, ""]


# ----- Markdown -----------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _pruned(line: dict, channels: int) -> str:
    count = line["num_pruned"]
    if count is None:
        return MISSING
    return f"{count} of {channels}" if channels else str(count)


def _cells(line: dict, channels: int) -> list[str]:
    return [line["attack"], line["model"], _pruned(line, channels),
            *(_number(line[key]) for key in _SCORES), line["schedule"]]


def _table(results: dict[str, RepairResult]) -> list[tuple[str, list[str]]]:
    """(defense, cells) per line of the comparison table."""
    return [(line["defense"], _cells(line, results[line["attack"]].channels))
            for line in comparison_rows(results)]


def _md_row(values: list[str]) -> str:
    return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"


def _md_goal(goals: dict[str, list[_Verdict]]) -> list[str]:
    out = ["## Goal", "", f"Fine-pruning (B''_X, and its GoodNet G''_X) on the test data: {GOAL}.",
           ""]
    for attack, verdicts in goals.items():
        out.append(f"- **{attack}**: {_summary(verdicts)}.")
        out += [f"  - X={v.threshold}: {v.status} — {v.figures}." for v in verdicts]
    return out


def _networks(results: dict[str, RepairResult]) -> list[tuple[str, str]]:
    """(attack, what was pruned) per attack."""
    out = []
    for attack, result in results.items():
        layer = f"layer {result.layer}" if result.layer else "its layer"
        size = f" ({result.channels} channels)" if result.channels else ""
        out.append((attack, f"{result.model or 'the network'}, {layer}{size} pruned"))
    return out


def comparison_markdown(results: Mapping[str, RepairResult], title: str = DEFAULT_TITLE,
                        meta: Mapping[str, str] | None = None) -> str:
    """The comparison as a Markdown document: title, meta lines, the table, the detection
    table (when some attack has detection figures) and the goal.

    Args:
        results: attack name -> its `RepairResult` (or its dict form), in display order.
        title: the document's title. Defaults to `DEFAULT_TITLE`.
        meta: lines listed under the title, name -> text (e.g. machine, time taken,
            command). Defaults to `None` (none).

    Returns:
        The Markdown text, ending with a newline. Percentages have 2 decimals, "—" marks
        a value that was not measured.

    Raises:
        ReportError: (a ValueError) when `results` is empty or a result is malformed.

    Example:

    >>> print(comparison_markdown({"patch": result}, meta={"machine": "2 cores"}))
    # keras-prune-guard benchmark: pruning defenses compared
    ...
    """
    checked = _checked(results)
    out = [f"# {title}", ""]
    if meta:
        out += [f"- **{key}**: {value}" for key, value in meta.items()] + [""]
    out += [_md_row(list(COLUMNS)), _md_row(["---"] * 2 + ["---:"] * 6 + ["---"])]
    out += [_md_row(cells) for _, cells in _table(checked)]
    out += ["", "Networks: " + "; ".join(f"{a}: {t}" for a, t in _networks(checked)) + ".", ""]
    out += _md_detection(checked)
    return "\n".join(out + _md_goal(_goals(checked))) + "\n"


# ----- HTML ---------------------------------------------------------------------------------

_CSP = ('<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">")
_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; background: #fafafa; color: #222; }
main { max-width: 1200px; margin: 0 auto; padding: 24px; background: #fff; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f0f0f0; }
td:nth-child(-n+2), th:nth-child(-n+2), td:last-child { text-align: left; }
tr.none td { background: #f7f7ff; }
tr.fine-pruning td { background: #fdf6ec; }
tr.goodnet.fine_tuned td { background: #f3efe0; }
tr.strip td { background: #f4f4f4; }
li.met { color: #1b5e20; } li.not-met { color: #b71c1c; }
figure img { max-width: 100%; height: auto; }
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_table(results: dict[str, RepairResult]) -> list[str]:
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in COLUMNS) + "</tr>"]
    for defense, cells in _table(results):
        tds = "".join(f"<td>{_esc(c)}</td>" for c in cells)
        out.append(f'<tr class="{_esc(defense)}">{tds}</tr>')
    return out + ["</table>"]


def _html_detection(results: dict[str, RepairResult]) -> list[str]:
    lines = _detection_table(results)
    if not lines:
        return []
    out = ["<h2>Detection</h2>", '<table class="detection">',
           "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in DETECTION_HEADERS) + "</tr>"]
    out += [f'<tr class="{_esc(kind)}">' + "".join(f"<td>{_esc(c)}</td>" for c in cells)
            + "</tr>" for kind, cells in lines]
    return out + ["</table>", f"<p>{_esc(DETECTION_NOTE_COMPARISON)}</p>"]


def _html_roc(results: dict[str, RepairResult]) -> list[str]:
    """Each attack's ROC curves as one figure drawn in memory (none without a curve)."""
    if not _roc_panels(results):
        return []
    buffer = io.BytesIO()
    plot_comparison_roc(results, buffer)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return ["<h2>ROC curves</h2>",
            f'<figure><img alt="ROC curves per attack" src="{uri}"></figure>']


def _html_goal(goals: dict[str, list[_Verdict]]) -> list[str]:
    out = ["<h2>Goal</h2>",
           f"<p>Fine-pruning (B''_X, and its GoodNet G''_X) on the test data: {_esc(GOAL)}.</p>",
           "<ul>"]
    for attack, verdicts in goals.items():
        items = "".join(f'<li class="{v.status.replace(" ", "-")}">X={_esc(v.threshold)}: '
                        f"<strong>{_esc(v.status)}</strong> — {_esc(v.figures)}.</li>"
                        for v in verdicts)
        out.append(f"<li><strong>{_esc(attack)}</strong>: {_esc(_summary(verdicts))}."
                   f"<ul>{items}</ul></li>")
    return out + ["</ul>"]


def _html_figure(plot_path: str | os.PathLike | None) -> list[str]:
    if plot_path is None:
        return []
    path = Path(plot_path)
    if not path.is_file():
        raise ReportError(f"plot_path = {str(path)!r}: no such file")
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return ["<h2>Pruning curves</h2>",
            f'<figure><img alt="pruning curves per attack" src="{uri}"></figure>']


def comparison_html(results: Mapping[str, RepairResult], title: str = DEFAULT_TITLE,
                    meta: Mapping[str, str] | None = None,
                    plot_path: str | os.PathLike | None = None) -> str:
    """The comparison as one self-contained HTML page (every text escaped).

    Args:
        results: attack name -> its `RepairResult` (or its dict form), in display order.
        title: the page's title. Defaults to `DEFAULT_TITLE`.
        meta: lines listed under the title, name -> text. Defaults to `None` (none).
        plot_path: a PNG (e.g. from `plot_comparison`) embedded as a `data:` URI.
            Defaults to `None` (no figure).

    Returns:
        The HTML text, with the tables of `comparison_markdown` and its goal lines, and
        (when some attack has one) each attack's ROC curves drawn in memory
        (`plot_comparison_roc`).

    Raises:
        ReportError: (a ValueError) when `results` is empty, a result is malformed or
            `plot_path` is not a file.

    Example:

    >>> Path("comparison.html").write_text(comparison_html({"patch": result}))
    """
    checked = _checked(results)
    head = ['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8">', _CSP,
            f"<title>{_esc(title)}</title>", f"<style>{_CSS}</style>", "</head>"]
    body = ["<body>", "<main>", f"<h1>{_esc(title)}</h1>"]
    if meta:
        body += ["<ul>"] + [f"<li><strong>{_esc(k)}</strong>: {_esc(v)}</li>"
                            for k, v in meta.items()] + ["</ul>"]
    body += _html_table(checked)
    body.append("<p>Networks: " + "; ".join(f"{_esc(a)}: {_esc(t)}"
                                            for a, t in _networks(checked)) + ".</p>")
    body += _html_detection(checked) + _html_roc(checked)
    body += _html_goal(_goals(checked)) + _html_figure(plot_path)
    return "\n".join(head + body + ["</main>", "</body>", "</html>"]) + "\n"


# ----- the figure ---------------------------------------------------------------------------


def _fine_pruned_markers(ax, result: RepairResult) -> None:
    """B''_X's clean test accuracy and attack success at each X's fraction pruned."""
    points = [(row.fraction_pruned, row.fine_tuned.repaired, threshold_name(row.threshold))
              for row in result.rows
              if row.fine_tuned is not None and row.fine_tuned.repaired is not None
              and row.fraction_pruned is not None]
    for key, color, marker, label in (
            ("test_accuracy", VALID_COLOR, "*", "B'' clean test accuracy"),
            ("attack_success", ATTACK_COLOR, "X", "B'' attack success (test)")):
        found = [(f, getattr(s, key), x) for f, s, x in points if getattr(s, key) is not None]
        if found:
            ax.scatter([f for f, _, _ in found], [v for _, v, _ in found], s=110, color=color,
                       marker=marker, edgecolors="black", zorder=3, label=label)
        for f, v, x in found:
            ax.annotate(f"X={x}", (f, v), xytext=(6, 4), textcoords="offset points",
                        fontsize="x-small")


def _panel(ax, attack: str, result: RepairResult) -> None:
    """One attack: clean validation accuracy and ASR along the pruning, B'' markers."""
    xs = [p.fraction_pruned for p in result.curve]
    ax.plot(xs, [p.valid_accuracy for p in result.curve], color=VALID_COLOR, lw=2,
            label="validation accuracy (clean)")
    attack_points = [(p.fraction_pruned, p.attack_success) for p in result.curve
                     if p.attack_success is not None]
    if attack_points:
        ax.plot(*zip(*attack_points), color=ATTACK_COLOR, lw=2,
                label="attack success rate (poisoned)")
    _fine_pruned_markers(ax, result)
    ax.set_title(attack)
    ax.set_xlabel("fraction of channels pruned")
    ax.set_ylabel("%")
    ax.set_xlim(0, max([1.0, *xs]))
    ax.set_ylim(-3, 105)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="x-small", framealpha=0.9)


def plot_comparison(results: Mapping[str, RepairResult], path: str | os.PathLike) -> Path:
    """Draws one panel per attack (two per row) into a PNG, written atomically.

    Each panel shows clean validation accuracy and attack success rate against the
    fraction of channels pruned (`result.curve`), with a marker for B''_X's clean test
    accuracy and attack success at each X's fraction pruned. The figure is
    `PANEL_SIZE` per panel at `PLOT_DPI`, drawn with the Agg canvas, never `pyplot`.

    Args:
        results: attack name -> its `RepairResult` (or its dict form); every curve
            must have a point.
        path: the `.png` file to write.

    Returns:
        `Path(path)`.

    Raises:
        ReportError: (a ValueError) when `results` is empty or a curve has no point.

    Example:

    >>> plot_comparison({"patch": result, "blend": other}, "comparison.png")
    PosixPath('comparison.png')
    """

    checked = _checked(results)
    empty = [attack for attack, result in checked.items() if not result.curve]
    if empty:
        raise ReportError(f"results{empty}: expected a pruning curve with a point, found none")
    cols = min(2, len(checked))
    rows = math.ceil(len(checked) / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (attack, result) in zip(axes, checked.items()):
        _panel(ax, attack, result)
    for ax in axes[len(checked):]:
        fig.delaxes(ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return Path(path)


def _roc_panels(results: dict[str, RepairResult]) -> list[tuple[str, list]]:
    """(attack, drawable curves) of each attack with a ROC curve among its detectors."""
    panels = [(attack, drawable(default_detectors(result))) for attack, result in
              results.items()]
    return [(attack, curves) for attack, curves in panels if curves]


def plot_comparison_roc(results: Mapping[str, RepairResult],
                        path: str | os.PathLike | io.IOBase) -> Path | None:
    """Draws each attack's ROC curves (its `default_detectors`) as a panel, two per row.

    Log false-alarm axis, AUROC in the legend and the calibrated operating points marked,
    as `plot.plot_roc`; `PANEL_SIZE` per panel at `PLOT_DPI`, Agg canvas, never `pyplot`.

    Args:
        results: attack name -> its `RepairResult` (or its dict form).
        path: the `.png` file to write (atomically), or a binary file object.

    Returns:
        `Path(path)`, or None when `path` is a file object.

    Raises:
        ReportError: (a ValueError) when `results` is empty or no attack has a ROC curve.

    Example:

    >>> plot_comparison_roc({"patch": result, "blend": other}, "comparison_roc.png")
    PosixPath('comparison_roc.png')
    """
    panels = _roc_panels(_checked(results))
    if not panels:
        raise ReportError("results: expected an attack with a detector's ROC curve, found none")
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (attack, curves) in zip(axes, panels):
        draw_roc(ax, curves, legend="x-small")
        ax.set_title(attack)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    fig.tight_layout()
    if isinstance(path, io.IOBase):
        fig.savefig(path, format="png", metadata={"Software": None})
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return Path(path)


# ----- the files ----------------------------------------------------------------------------


def comparison_json(results: Mapping[str, RepairResult],
                    meta: Mapping[str, str] | None = None) -> str:
    """comparison.json: attack -> `RepairResult.to_dict()`, plus "meta", as strict JSON.

    Raises:
        ReportError: (a ValueError) when an attack is named "meta" or a value is NaN.

    Example:

    >>> data = json.loads(comparison_json({"patch": result}))
    >>> RepairResult.from_dict(data["patch"]) == result
    True
    """
    checked = _checked(results)
    if _META_KEY in checked:
        raise ReportError(f"results: an attack may not be named {_META_KEY!r}, found "
                          f"{sorted(checked)}")
    data = {attack: result.to_dict() for attack, result in checked.items()}
    data[_META_KEY] = {str(k): str(v) for k, v in (meta or {}).items()}
    try:
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError as error:
        raise ReportError(f"results: cannot be written as JSON: {error}") from None


def write_comparison(results: Mapping[str, RepairResult], out_dir: str | os.PathLike,
                     meta: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Writes comparison.md, .html, .png and .json into `out_dir`, each atomically.

    Every text is built before any file is replaced, so a bad result changes nothing.

    Args:
        results: attack name -> its `RepairResult` (or its dict form), in display order.
        out_dir: the folder to write into (created when missing).
        meta: lines listed under the title and kept in comparison.json under "meta".
            Defaults to `None` (none).

    Returns:
        The written paths by kind: keys "md", "html", "png", "json" (`COMPARISON_FILES`).

    Raises:
        ReportError: (a ValueError) when `results` is empty or malformed.

    Example:

    >>> write_comparison({"patch": result}, "benchmark")["html"]
    PosixPath('benchmark/comparison.html')
    """
    checked = _checked(results)
    paths = {kind: Path(out_dir) / name for kind, name in COMPARISON_FILES.items()}
    texts = {"md": comparison_markdown(checked, meta=meta),
             "json": comparison_json(checked, meta)}
    plot_comparison(checked, paths["png"])
    texts["html"] = comparison_html(checked, meta=meta, plot_path=paths["png"])
    for kind, text in texts.items():
        with atomic_path(paths[kind]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths
