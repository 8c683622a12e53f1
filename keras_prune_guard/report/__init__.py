"""The repair report: renderers of one typed `RepairResult`, split by what they write.

- `tables`: the results as rows, Markdown and CSV (`csv_rows`, `markdown_table`, ...),
  and the detectors' figures (`detection_rows`, `detection_markdown`, ...);
- `plot`: the pruning curve and the detectors' ROC curves as PNGs (`plot_curve`,
  `plot_roc`);
- `html`: one self-contained HTML page (`render_html`);
- `files`: every report file in a folder, report.json being the result itself
  (`write_report`, `result_json`);
- `comparison`: several attacks' results side by side, the benchmark matrix
  (`write_comparison`, `comparison_markdown`, ...).

Each renderer takes a `RepairResult`; a plain dict (a report.json read back, or a 0.1
summary) is read with `RepairResult.from_dict`, which names any field that is wrong.
No TensorFlow is needed; matplotlib is imported only when a plot is drawn.
"""

from keras_prune_guard.report.comparison import (
    comparison_html,
    comparison_markdown,
    comparison_rows,
    detection_comparison_rows,
    plot_comparison,
    plot_comparison_roc,
    write_comparison,
)
from keras_prune_guard.report.files import result_json, summary_json, write_report
from keras_prune_guard.report.html import CURVE_FIGURE, ROC_FIGURE, render_html
from keras_prune_guard.report.plot import ATTACK_COLOR, VALID_COLOR, plot_curve, plot_roc
from keras_prune_guard.report.tables import (
    CSV_COLUMNS,
    DETECTION_COLUMNS,
    csv_rows,
    csv_text,
    detection_csv_text,
    detection_markdown,
    detection_rows,
    fine_pruning_table,
    markdown_report,
    markdown_table,
)
from keras_prune_guard.results import ReportError

__all__ = [
    "ATTACK_COLOR",
    "CSV_COLUMNS",
    "CURVE_FIGURE",
    "DETECTION_COLUMNS",
    "ROC_FIGURE",
    "VALID_COLOR",
    "ReportError",
    "comparison_html",
    "comparison_markdown",
    "comparison_rows",
    "csv_rows",
    "csv_text",
    "detection_comparison_rows",
    "detection_csv_text",
    "detection_markdown",
    "detection_rows",
    "fine_pruning_table",
    "markdown_report",
    "markdown_table",
    "plot_comparison",
    "plot_comparison_roc",
    "plot_curve",
    "plot_roc",
    "render_html",
    "result_json",
    "write_comparison",
    "summary_json",
    "write_report",
]
