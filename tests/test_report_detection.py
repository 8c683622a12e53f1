"""The report's detection figures: the Detection table, detection.csv, roc.png, the HTML page
and the benchmark comparison, from hand-made results (no Keras training)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from test_report import (
    colour_pixels,
    data_uris,
    make_fine_tuned_summary,
    make_summary,
    parse_markdown_table,
)

from keras_prune_guard.config import DetectConfig
from keras_prune_guard.report import (
    CSV_COLUMNS,
    DETECTION_COLUMNS,
    ROC_FIGURE,
    ReportError,
    comparison_html,
    comparison_markdown,
    csv_rows,
    detection_comparison_rows,
    detection_csv_text,
    detection_markdown,
    detection_rows,
    markdown_report,
    plot_roc,
    render_html,
    write_comparison,
    write_report,
)
from keras_prune_guard.report.plot import ROC_MIN_FALSE_ALARM, STRIP_COLOR, draw_roc, drawable
from keras_prune_guard.report.tables import DETECTION_NOTE, detectors
from keras_prune_guard.results import Detection, FineTuneChoice, FineTuned, RepairResult

HEADERS = ["Detector", "Score", "Budget (%)", "Threshold", "Calibration images",
           "False alarm on clean test (%)", "Detection, all triggered (%)",
           "Detection, those fooling B (%)", "AUROC", "Detection at 1% FA (%)",
           "Detection at 5% FA (%)"]
GREEN = "#2ca02c"  # the colour of the first threshold (X = 2) in both figures
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def figures(method: str, score: str, base: float, roc: bool = True) -> Detection:
    """A detector's figures, each distinct (derived from `base`), with a 5-point ROC."""
    points = [[0.0, 0.0], [0.0005, base / 200], [0.01, base / 120], [0.05, base / 105],
              [1.0, 1.0]]
    return Detection(method=method, score=score, false_alarm=0.02, threshold=base / 1000,
                     calibration_images=360 + int(base), false_alarm_rate=1.25 + base / 100,
                     detection_rate=base, detection_rate_fooled=base + 0.5,
                     auroc=0.5 + base / 250, detection_at_1=base - 3.0,
                     detection_at_5=base - 1.0, roc=points if roc else [])


def with_detection(summary: dict | None = None) -> RepairResult:
    """`make_fine_tuned_summary` (X = 2, 10 fine-tuned) with G, G'' and STRIP figures, and
    X = 4 fine-pruned but keeping B' (so G''_4 has G_4's figures)."""
    result = RepairResult.from_dict(summary or make_fine_tuned_summary())
    result.detect = DetectConfig(false_alarm=0.02, strip_blends=32, strip_alpha=0.4)
    for i, row in enumerate(result.rows):
        row.detection = figures("goodnet", "confidence_drop", 40.0 + 10 * i)
        if row.fine_tuned is not None:
            row.fine_tuned.detection = figures("goodnet", "confidence_drop", 90.0 + i)
        else:
            row.fine_tuned = FineTuned(valid_accuracy=None, train_loss=[], choice=FineTuneChoice(
                schedule=None, epoch=None, reason="too few images", images=10,
                holdout_images=2, tolerance=3.0))
    result.strip = figures("strip", "entropy", 70.0)
    return result


def detection_section(markdown: str) -> str:
    return markdown.split("## Detection", 1)[1]


def cells_of(d: Detection) -> dict[str, str]:
    """The table cells expected for `d` (headers after "Detector")."""
    return {"Score": d.score, "Budget (%)": f"{d.false_alarm * 100:.2f}",
            "Threshold": f"{d.threshold:.4g}", "Calibration images": str(d.calibration_images),
            "False alarm on clean test (%)": f"{d.false_alarm_rate:.2f}",
            "Detection, all triggered (%)": f"{d.detection_rate:.2f}",
            "Detection, those fooling B (%)": f"{d.detection_rate_fooled:.2f}",
            "AUROC": f"{d.auroc:.3f}", "Detection at 1% FA (%)": f"{d.detection_at_1:.2f}",
            "Detection at 5% FA (%)": f"{d.detection_at_5:.2f}"}


# --- report.md and the CSV files -------------------------------------------------------------


def test_detection_table_rows_columns_and_numbers():
    result = with_detection()
    text = detection_section(markdown_report(result))
    headers, rows = parse_markdown_table(text)
    assert headers == HEADERS
    assert list(rows) == ["G_2", "G''_2", "G_4", "G''_4 (kept B')", "G_10", "G''_10",
                          "STRIP (on B)"]
    expected = {"G_2": result.rows[0].detection, "G''_2": result.rows[0].fine_tuned.detection,
                "G_4": result.rows[1].detection, "G''_4 (kept B')": result.rows[1].detection,
                "G''_10": result.rows[2].fine_tuned.detection, "STRIP (on B)": result.strip}
    for label, d in expected.items():
        assert {k: v for k, v in rows[label].items() if k != "Detector"} == cells_of(d), label
    assert rows["G''_10"]["Detection, all triggered (%)"] == "92.00"
    assert rows["G_2"]["AUROC"] == "0.660" and rows["G_2"]["Budget (%)"] == "2.00"
    assert rows["STRIP (on B)"]["Score"] == "entropy"
    assert DETECTION_NOTE in text and "held-out clean images only" in DETECTION_NOTE
    assert "32 blends" in text and "weight 0.4" in text
    md = markdown_report(result)
    assert md.index("## Pruning only vs fine-pruning") < md.index("## Detection") < md.index(
        "## What fine-pruning chose")


def test_detection_csv_has_the_field_names_and_raw_values():
    result = with_detection()
    parsed = list(csv.DictReader(io.StringIO(detection_csv_text(result))))
    assert tuple(parsed[0]) == DETECTION_COLUMNS
    assert [r["detector"] for r in parsed] == ["G_2", "G''_2", "G_4", "G''_4", "G_10", "G''_10",
                                               "STRIP"]
    strip = parsed[-1]
    assert strip["method"] == "strip" and float(strip["false_alarm"]) == 0.02  # a fraction
    assert float(strip["auroc"]) == pytest.approx(0.78)  # a fraction too
    assert float(strip["detection_rate_fooled"]) == 70.5
    assert int(strip["calibration_images"]) == 430
    assert detection_rows(result)[1]["detection_at_5"] == 89.0
    # report.csv keeps its own columns and rows: detection figures do not change it
    assert list(csv_rows(result)[0]) == list(CSV_COLUMNS)
    assert len(csv_rows(result)) == len(csv_rows(make_fine_tuned_summary())) + 2  # B''_4, G''_4


def test_result_without_detection_has_no_detection_section_nor_files(tmp_path):
    old = make_summary()
    assert detection_markdown(old) == "" and detection_csv_text(old) == ""
    assert "Detection" not in markdown_report(old).replace("Detection rate (%)", "")
    no_figures = RepairResult.from_dict(make_fine_tuned_summary())
    no_figures.detect = DetectConfig(false_alarm=0.0)  # 0.2's rule: no threshold, no figures
    assert "## Detection" not in markdown_report(no_figures)
    paths = write_report(old, tmp_path / "report")
    assert set(paths) == {"md", "csv", "json", "png", "html"}
    assert {p.name for p in (tmp_path / "report").iterdir()} == {
        "report.md", "report.csv", "report.json", "pruning_curve.png", "report.html"}
    saved = json.loads(paths["json"].read_text())
    assert set(saved["report_files"]) == {"md", "csv", "json", "png", "html"}
    page = paths["html"].read_text()
    assert "<h2>Detection</h2>" not in page and ROC_FIGURE not in page
    assert len(data_uris(page)) == 1  # the pruning curve only


# --- roc.png and report.html -----------------------------------------------------------------


def test_roc_png_is_written_listed_and_embedded_in_the_page(tmp_path):
    result = with_detection()
    out = tmp_path / "report"
    paths = write_report(result, out)
    roc = out / "roc.png"
    assert paths["roc_png"] == roc and paths["detection_csv"] == out / "detection.csv"
    data = roc.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(roc) as image:
        assert image.format == "PNG" and image.size == (800, 500)
        assert colour_pixels(image, GREEN, 4) > 300  # G_2 and G''_2 drawn in X = 2's colour
    saved = json.loads(paths["json"].read_text())
    assert saved["report_files"]["roc_png"] == str(roc)
    assert saved["report_files"]["detection_csv"] == str(out / "detection.csv")
    assert RepairResult.from_dict(saved).to_dict() == result.to_dict()
    page = paths["html"].read_text()
    images = [payload for _, payload in data_uris(page)]
    assert images == [data, paths["png"].read_bytes()]  # the ROC (with its table), the curve
    assert page.index("<h2>Detection</h2>") < page.index(f'alt="{ROC_FIGURE}"') < page.index(
        "<h2>Pruning curve</h2>")
    assert '<tr class="strip"><td>STRIP (on B)</td><td>entropy</td>' in page
    assert "<td>G&#x27;&#x27;_4 (kept B&#x27;)</td>" in page
    assert render_html(result.to_dict()).count(f'alt="{ROC_FIGURE}"') == 1  # drawn in memory


def test_rewriting_an_old_result_removes_the_earlier_roc_files(tmp_path):
    out = tmp_path / "report"
    write_report(with_detection(), out)
    assert (out / "roc.png").is_file() and (out / "detection.csv").is_file()
    write_report(make_summary(), out)
    assert not (out / "roc.png").exists() and not (out / "detection.csv").exists()


def test_roc_figure_log_axis_operating_points_and_merged_kept_curves():
    result = with_detection()
    curves = drawable(detectors(result))
    labels = [label for label, _ in curves]
    assert labels == ["G_2", "G''_2", "G_4 = G''_4 (kept B')", "G_10", "G''_10", "STRIP (on B)"]
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_roc(ax, curves)
    assert ax.get_xscale() == "log" and ax.get_xlim() == pytest.approx((ROC_MIN_FALSE_ALARM, 1))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "STRIP (on B): AUROC 0.780" in legend and "G_2: AUROC 0.660" in legend
    points = [line for line in ax.get_lines() if line.get_marker() == "o" and len(
        line.get_xdata()) == 1 and line.get_label().startswith("_")]
    assert len(points) == len(curves)  # one calibrated operating point per curve
    strip = result.strip
    assert any(p.get_xdata()[0] == strip.false_alarm_rate / 100
               and p.get_ydata()[0] == strip.detection_rate / 100
               and p.get_color() == STRIP_COLOR for p in points)
    first = ax.get_lines()[0].get_xdata()
    assert first[0] == ROC_MIN_FALSE_ALARM and first[1] == ROC_MIN_FALSE_ALARM  # 0, 5e-4 clipped


def test_roc_png_with_strip_only_and_nothing_to_draw():
    only_strip = RepairResult.from_dict(make_summary())
    only_strip.strip = figures("strip", "entropy", 70.0)
    buffer = io.BytesIO()
    assert plot_roc(only_strip, buffer) is None
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert colour_pixels(image, GREEN, 4) == 0  # no GoodNet curve
    with pytest.raises(ReportError, match="ROC curve"):
        plot_roc(make_summary(), io.BytesIO())


def test_reserved_roc_caption_is_refused(tmp_path):
    figure = tmp_path / "other.png"
    Image.new("RGB", (8, 8)).save(figure)
    with pytest.raises(ReportError, match="reserved"):
        write_report(with_detection(), tmp_path / "report", figures={ROC_FIGURE: figure})
    assert not (tmp_path / "report").exists()


# --- streamed: figures not measured ----------------------------------------------------------


def test_detection_with_none_figures_renders_dashes(tmp_path):
    result = RepairResult.from_dict(make_summary())
    result.rows[0].detection = Detection(method="goodnet", score="kl", false_alarm=0.01,
                                         threshold=0.25, calibration_images=120)
    result.strip = figures("strip", "entropy", 70.0, roc=False)
    result.strip.auroc = result.strip.detection_rate_fooled = None
    _, rows = parse_markdown_table(detection_section(markdown_report(result)))
    assert list(rows) == ["G_2", "STRIP (on B)"]
    g2 = rows["G_2"]
    assert (g2["Score"], g2["Budget (%)"], g2["Threshold"], g2["Calibration images"]) == (
        "kl", "1.00", "0.25", "120")
    assert [g2[h] for h in HEADERS[5:]] == ["—"] * 6
    assert rows["STRIP (on B)"]["AUROC"] == "—"
    assert rows["STRIP (on B)"]["Detection, all triggered (%)"] == "70.00"
    assert rows["STRIP (on B)"]["Detection, those fooling B (%)"] == "—"
    parsed = list(csv.DictReader(io.StringIO(detection_csv_text(result))))
    assert parsed[0]["false_alarm_rate"] == "" and parsed[0]["threshold"] == "0.25"
    paths = write_report(result, tmp_path / "report")  # a table, but no curve to draw
    assert "detection_csv" in paths and "roc_png" not in paths
    assert not (tmp_path / "report" / "roc.png").exists()
    page = paths["html"].read_text()
    assert "<h2>Detection</h2>" in page and ROC_FIGURE not in page
    assert "<td>—</td>" in page[page.index("<h2>Detection</h2>"):]


# --- the benchmark comparison ----------------------------------------------------------------


def test_comparison_has_the_default_detectors_figures():
    results = {"patch": with_detection(), "blend": RepairResult.from_dict(make_summary())}
    text = comparison_markdown(results)
    section = text.split("## Detection", 1)[1].split("## Goal", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Attack", *HEADERS]
    body = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]
    assert [(r[0], r[1]) for r in body] == [("patch", "G'' X=2"), ("patch", "G'' X=4 (kept B')"),
                                            ("patch", "G'' X=10"), ("patch", "STRIP (on B)")]
    tuned10 = results["patch"].rows[2].fine_tuned.detection
    assert dict(zip(HEADERS[1:], body[2][2:])) == cells_of(tuned10)
    assert body[1][7] == f"{results['patch'].rows[1].detection.detection_rate:.2f}"  # G_4's
    rows = detection_comparison_rows(results)
    assert [r["detector"] for r in rows] == ["G''_2", "G''_4", "G''_10", "STRIP"]
    assert list(rows[0]) == ["attack", *DETECTION_COLUMNS] and rows[3]["auroc"] == 0.78
    assert "## Detection" not in comparison_markdown({"blend": results["blend"]})


def test_comparison_html_embeds_the_roc_curves_per_attack(tmp_path):
    results = {"patch": with_detection(), "blend": RepairResult.from_dict(make_summary())}
    paths = write_comparison(results, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparison.html", "comparison.json", "comparison.md", "comparison.png"]
    page = paths["html"].read_text()
    assert "<h2>Detection</h2>" in page and "<h2>ROC curves</h2>" in page
    images = data_uris(page)
    assert len(images) == 2 and images[1][1] == paths["png"].read_bytes()
    with Image.open(io.BytesIO(images[0][1])) as roc:  # one panel: only patch has curves
        assert roc.size == (600, 450)
        assert colour_pixels(roc, GREEN, 4) > 100
        assert np.asarray(roc.convert("L")).std() > 20
    assert "<td>G&#x27;&#x27; X=10</td>" in page
    back = json.loads(paths["json"].read_text())["patch"]
    assert RepairResult.from_dict(back).strip == results["patch"].strip
    assert "ROC curves" not in comparison_html({"blend": results["blend"]})
