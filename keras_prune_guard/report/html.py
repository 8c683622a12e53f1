"""One self-contained HTML page: settings, tables, the pruning curve, figures, warnings."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keras_prune_guard.report.plot import plot_curve
from keras_prune_guard.report.tables import (
    as_result,
    choices,
    comparison,
    saved_files,
    settings,
    table,
)
from keras_prune_guard.results import RepairResult, ReportError

CURVE_FIGURE = "Pruning curve"
"""The `images` key under which `render_html` expects (or else draws) the pruning curve."""

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


def _data_uri(path: Path) -> str:
    """The file as a base64 `data:` URI (its type taken from the suffix)."""
    mime = _IMAGE_TYPES[path.suffix.lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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
    """A self-contained HTML page: title, settings, table, pruning curve, figures, warnings.

    Images are inlined as base64 `data:` URIs and the CSS is inline, so the page loads no
    external resource (its Content-Security-Policy forbids any). The pruning curve is taken
    from `images[CURVE_FIGURE]` when given, else drawn in memory; every other entry of
    `images` is shown as an extra figure captioned by its key.

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

    rows = ["<table>", "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers)
             + "</tr></thead>", "<tbody>"]
    for kind, line in zip(kinds, cells):
        rows.append(f'<tr class="{kind}">' + "".join(f"<td>{esc(c)}</td>" for c in line)
                     + "</tr>")
    rows += ["</tbody>", "</table>"]

    if CURVE_FIGURE in images:
        curve_uri = _data_uri(images.pop(CURVE_FIGURE))
    else:
        buffer = io.BytesIO()
        plot_curve(result, buffer)
        curve_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    figures = [(CURVE_FIGURE, curve_uri)] + [(n, _data_uri(p)) for n, p in images.items()]

    body = [f"<h1>{esc(title)}</h1>", f'<p class="meta">{esc(settings(result))}</p>',
            "<h2>Results</h2>", *rows]
    comparison_headers, comparison_cells = comparison(result)
    if comparison_cells:
        body += ["<h2>Pruning only vs fine-pruning</h2>", '<table class="comparison">',
                 "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in comparison_headers)
                 + "</tr></thead>", "<tbody>"]
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>"
                 for line in comparison_cells]
        body += ["</tbody>", "</table>"]
    chosen = choices(result)
    if chosen:
        body += ["<h2>What fine-pruning chose (on clean data only)</h2>", "<ul>"]
        body += [f"<li>{esc(line)}</li>" for line in chosen] + ["</ul>"]
    for name, uri in figures:
        body += [f"<h2>{esc(name)}</h2>", "<figure>",
                 f'<img src="{uri}" alt="{esc(name, quote=True)}">', "</figure>"]
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
