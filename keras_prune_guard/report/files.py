"""Every report file in one folder; report.json is the `RepairResult` itself."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.report.html import CURVE_FIGURE, ROC_FIGURE, check_images, render_html
from keras_prune_guard.report.plot import has_roc, plot_curve, plot_roc
from keras_prune_guard.report.tables import (
    as_result,
    csv_text,
    detection_csv_text,
    markdown_report,
)
from keras_prune_guard.results import RepairResult, ReportError

REPORT_FILES = {
    "md": "report.md",
    "csv": "report.csv",
    "json": "report.json",
    "png": "pruning_curve.png",
    "html": "report.html",
}
"""The files `write_report` always writes, by kind."""
DETECTION_FILES = {
    "detection_csv": "detection.csv",
    "roc_png": "roc.png",
}
"""The files `write_report` writes only when there is something in them, by kind: the
detection table (some detector has figures) and the ROC curves (some detector has one)."""


def report_names(result: RepairResult) -> dict[str, str]:
    """The file names `write_report` writes for `result`, by kind.

    Args:
        result: the `RepairResult`.

    Returns:
        `REPORT_FILES`, plus the `DETECTION_FILES` that `result` has something for.
    """
    names = dict(REPORT_FILES)
    if detection_csv_text(result):
        names["detection_csv"] = DETECTION_FILES["detection_csv"]
    if has_roc(result):
        names["roc_png"] = DETECTION_FILES["roc_png"]
    return names


def result_json(result: RepairResult | Mapping) -> str:
    """The whole result (curve included) as strict JSON: `RepairResult.to_dict()`.

    Raises:
        ReportError: (a ValueError) when it holds a value JSON cannot represent (NaN).

    Example:

    >>> RepairResult.from_dict(json.loads(result_json(result))) == result
    True
    """
    try:
        return json.dumps(as_result(result).to_dict(), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        if isinstance(error, ReportError):
            raise
        raise ReportError(f"summary: cannot be written as JSON: {error}") from None


def summary_json(result: RepairResult | Mapping) -> str:
    """The 0.1 name of `result_json`."""
    return result_json(result)


def write_report(
    result: RepairResult | Mapping,
    out_dir: str | os.PathLike,
    *,
    figures: Mapping[str, str | os.PathLike] | None = None,
    listed_as: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Writes report.md, report.csv, report.json, pruning_curve.png and report.html, and
    detection.csv and roc.png when a detector was measured (`DETECTION_FILES`).

    `result.report_files` is filled in first, so report.json lists the files beside it
    and equals the returned result. Each file goes through `atomic_path`; the texts and
    figure files are checked before anything is written. A detection.csv or roc.png left
    in `out_dir` by an earlier report is removed when this result has none.

    Args:
        result: the `RepairResult` (a dict is read with `RepairResult.from_dict`).
        out_dir: the folder to write into (created when missing).
        figures: extra figures for the HTML page, caption -> image file,
            e.g. `{"Saliency": "saliency.png"}`. Defaults to none.
        listed_as: the folder the files will be published in, when `out_dir` is a
            staging folder (`result.report_files` names the published paths).
            Defaults to `None` (`out_dir` itself).

    Returns:
        The written paths by kind: keys "md", "csv", "json", "png", "html", and
        "detection_csv" and "roc_png" when written.

    Raises:
        ReportError: (a ValueError) when the result is malformed or a figure is missing.

    Example:

    >>> write_report(result, "saved_models/report")["html"]
    PosixPath('saved_models/report/report.html')
    """
    result = as_result(result)
    figures = check_images(figures, "figures")
    reserved = sorted({CURVE_FIGURE, ROC_FIGURE} & set(figures))
    if reserved:
        raise ReportError(
            f"figures: the caption {reserved[0]!r} is reserved for the report's own figure, "
            f"found it among {sorted(figures)}"
        )
    out_dir = Path(out_dir)
    names = report_names(result)
    paths = {kind: out_dir / name for kind, name in names.items()}
    listed = Path(listed_as) if listed_as is not None else out_dir
    result.report_files = {kind: str(listed / name) for kind, name in names.items()}
    # Build every text first so that a bad result fails before any file is replaced.
    texts = {"md": markdown_report(result), "csv": csv_text(result), "json": result_json(result)}
    if "detection_csv" in paths:
        texts["detection_csv"] = detection_csv_text(result)
    _plot(plot_curve, result, paths["png"])
    if "roc_png" in paths:
        _plot(plot_roc, result, paths["roc_png"])
    for kind, text in texts.items():
        with atomic_path(paths[kind]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    own = {CURVE_FIGURE: paths["png"]}
    if "roc_png" in paths:
        own[ROC_FIGURE] = paths["roc_png"]
    page = render_html(result, {**own, **figures})
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(page, encoding="utf-8")
    _remove_stale(out_dir, names)
    return paths


def _plot(draw, result: RepairResult, path: Path) -> None:
    """`draw(result, file)` into `path`, atomically."""
    with atomic_path(path) as tmp:
        draw(result, tmp)


def _remove_stale(out_dir: Path, names: dict[str, str]) -> None:
    """Removes the `DETECTION_FILES` of an earlier report that this one did not write."""
    for kind, name in DETECTION_FILES.items():
        if kind not in names:
            (out_dir / name).unlink(missing_ok=True)
