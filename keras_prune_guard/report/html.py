"""One self-contained HTML page: settings, tables, the pruning curve, the detectors' ROC
curves, figures, warnings."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keras_prune_guard.report.plot import has_roc, plot_curve, plot_roc
from keras_prune_guard.report.tables import (
    DETECTION_NOTE,
    as_result,
    choices,
    comparison,
    detection_table,
    saved_files,
    settings,
    strip_note,
    table,
)
from keras_prune_guard.results import RepairResult, ReportError

CURVE_FIGURE = "Pruning curve"
"""The `images` key under which `render_html` expects (or else draws) the pruning curve."""
ROC_FIGURE = "ROC curves"
"""The `images` key under which `render_html` expects (or else draws, when a detector has a
ROC) the detectors' ROC curves, shown with the detection table."""

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
tr.strip td { background: #f4f4f4; }
p.note { color: #444; max-width: 60em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
section.warnings { background: #fff8e1; border-left: 4px solid #f0ad00; padding: 4px 16px; }
code { font-size: 0.9em; }
"""


def _data_uri(path: Path) -> str:
    """The file as a base64 `data:` URI (its type taken from the suffix)."""
    mime = _IMAGE_TYPES[path.suffix.lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _drawn(draw, result: RepairResult) -> str:
    """A figure drawn in memory by `draw(result, buffer)`, as a PNG `data:` URI."""
    buffer = io.BytesIO()
    draw(result, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _table_html(headers: list[str], cells: list[list[str]], kinds: list[str] | None = None,
                css: str = "") -> list[str]:
    """An HTML table, every text escaped; `kinds` gives each row's CSS class."""
    esc = html.escape
    kinds = kinds or [""] * len(cells)
    out = [f'<table class="{css}">' if css else "<table>", "<thead><tr>"
           + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    for kind, line in zip(kinds, cells):
        row = f'<tr class="{kind}">' if kind else "<tr>"
        out.append(row + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>")
    return out + ["</tbody>", "</table>"]


def _figure_html(name: str, uri: str, heading: str = "h2") -> list[str]:
    esc = html.escape
    return [f"<{heading}>{esc(name)}</{heading}>", "<figure>",
            f'<img src="{uri}" alt="{esc(name, quote=True)}">', "</figure>"]


def _roc_uri(result: RepairResult, images: dict[str, Path]) -> str | None:
    """The ROC figure: `images[ROC_FIGURE]` (taken out) when the result has detectors,
    else drawn in memory when one has a ROC; None when there is nothing to show."""
    if detection_table(result)[1] and ROC_FIGURE in images:
        return _data_uri(images.pop(ROC_FIGURE))
    return _drawn(plot_roc, result) if has_roc(result) else None


def detection_html(result: RepairResult, roc_uri: str | None) -> list[str]:
    """The "Detection" section: the table, the note under it and the ROC figure.

    Args:
        result: the `RepairResult`.
        roc_uri: the ROC figure as a `data:` URI, or None (none drawn).

    Returns:
        The HTML lines, none without detection figures.
    """
    headers, cells, kinds = detection_table(result)
    if not cells:
        return []
    out = ["<h2>Detection</h2>", *_table_html(headers, cells, kinds, "detection"),
           f'<p class="note">{html.escape(DETECTION_NOTE + strip_note(result))}</p>']
    return out + (_figure_html(ROC_FIGURE, roc_uri, "h3") if roc_uri else [])


def check_images(images: Mapping[str, Any] | None, argument: str) -> dict[str, Path]:
    out = {}
    if images is not None and not isinstance(images, Mapping):
        raise ReportError(f"{argument}: expected a dict or None, found {type(images).__name__}")
    for name, path in (images or {}).items():
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


def render_html(
    result: RepairResult | Mapping, images: Mapping[str, str | os.PathLike] | None = None
) -> str:
    """A self-contained HTML page: title, settings, tables, pruning curve, figures, warnings.

    Images are inlined as base64 `data:` URIs and the CSS is inline, so the page loads no
    external resource (its Content-Security-Policy forbids any). The pruning curve is taken
    from `images[CURVE_FIGURE]` when given, else drawn in memory; so are the ROC curves
    (`images[ROC_FIGURE]`, drawn only when a detector has one), shown in the "Detection"
    section with the detection table. Every other entry of `images` is shown as an extra
    figure captioned by its key.

    Args:
        result: the `RepairResult` (or its dict form).
        images: caption -> image file (.png, .jpg, .gif, .webp, .svg), e.g.
            `{"Saliency": "saliency.png"}`. Defaults to no extra figure.

    Returns:
        The HTML document.

    Raises:
        ReportError: (a ValueError) when an image file is missing or of an unsupported type.

    Example:

    >>> Path("report.html").write_text(render_html(result, {"Saliency": "saliency.png"}))
    """
    result = as_result(result)
    images = check_images(images, "images")
    esc = html.escape
    title = result.title
    headers, cells, kinds = table(result)

    rows = _table_html(headers, cells, kinds)
    curve_uri = (_data_uri(images.pop(CURVE_FIGURE)) if CURVE_FIGURE in images
                 else _drawn(plot_curve, result))
    roc_uri = _roc_uri(result, images)
    figures = [(CURVE_FIGURE, curve_uri)] + [(n, _data_uri(p)) for n, p in images.items()]

    body = [f"<h1>{esc(title)}</h1>", f'<p class="meta">{esc(settings(result))}</p>',
            "<h2>Results</h2>", *rows]
    comparison_headers, comparison_cells = comparison(result)
    if comparison_cells:
        body += ["<h2>Pruning only vs fine-pruning</h2>",
                 *_table_html(comparison_headers, comparison_cells, css="comparison")]
    body += detection_html(result, roc_uri)
    chosen = choices(result)
    if chosen:
        body += ["<h2>What fine-pruning chose (on clean data only)</h2>", "<ul>"]
        body += [f"<li>{esc(line)}</li>" for line in chosen] + ["</ul>"]
    for name, uri in figures:
        body += _figure_html(name, uri)
    files = saved_files(result)
    if files:
        body += ["<h2>Saved networks</h2>", "<ul>"]
        for name, entries in files:
            body.append(f"<li>{esc(name)}: " + ", ".join(
                f"{esc(k)} <code>{esc(v)}</code>" for k, v in entries) + "</li>")
        body.append("</ul>")
    warnings = result.warnings
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
