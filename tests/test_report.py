"""The report: Markdown/CSV tables, JSON, the pruning-curve PNG and the self-contained HTML page."""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from keras_prune_guard.report import (
    ATTACK_COLOR,
    CSV_COLUMNS,
    CURVE_FIGURE,
    VALID_COLOR,
    ReportError,
    csv_rows,
    csv_text,
    fine_pruning_table,
    markdown_report,
    markdown_table,
    plot_curve,
    render_html,
    summary_json,
    write_report,
)
from keras_prune_guard.results import RepairResult

CHANNELS = 60
BASELINE = 98.65


def as_written(summary: dict, paths: dict) -> dict:
    """What report.json holds for a 0.1-style summary: the typed result, files listed."""
    result = RepairResult.from_dict(summary)
    result.report_files = {kind: str(path) for kind, path in paths.items()}
    return result.to_dict()


def make_summary(*, test_data: bool = True, attack_curve: bool = True) -> dict:
    """A realistic summary: 60 channels at pool_3, flat then declining accuracy, X = 2, 4, 10."""
    curve = []
    for k in range(CHANNELS + 1):
        acc = BASELINE - (0.02 * k if k < 40 else 0.8 + 0.05 * (k - 40) ** 2.2)
        asr = 100.0 if k < 52 else max(0.0, 100.0 - 12.5 * (k - 51))
        curve.append({
            "step": k,
            "channel": None if k == 0 else (k * 7) % CHANNELS,
            "channels_pruned": k,
            "fraction_pruned": k / CHANNELS,
            "valid_accuracy": round(max(acc, 0.08), 4),
            "attack_success": asr if attack_curve else None,
        })
    rows = []
    for x in (2.0, 4.0, 10.0):
        point = next(p for p in curve if p["valid_accuracy"] <= BASELINE - x)
        row = {
            "threshold": x,
            "reached": True,
            "channels_pruned": point["channels_pruned"],
            "fraction_pruned": point["fraction_pruned"],
            "valid_accuracy": point["valid_accuracy"],
            "repaired": None,
            "goodnet": None,
            "files": {"repaired_keras": f"saved_models/repaired_{x:g}.keras",
                      "repaired_h5": f"saved_models/repaired_{x:g}.h5"},
        }
        if test_data:
            row["repaired"] = {"test_accuracy": point["valid_accuracy"] - 0.31,
                               "attack_success": 100.0 - x * 3}
            row["goodnet"] = {"test_accuracy": point["valid_accuracy"] - 0.52,
                              "attack_success": 97.0 - x * 3, "detection_rate": 2.0 + x,
                              "false_alarm_rate": 3.2 + x / 10}
        rows.append(row)
    return {
        "title": "keras-prune-guard repair report",
        "model": "lab3_bd_weights.h5", "layer": "pool_3", "channels": CHANNELS,
        "num_classes": 1283, "order": "ascending", "relative": False, "keep": "first_below",
        "baseline": {"valid_accuracy": BASELINE,
                     "test_accuracy": 98.6 if test_data else None,
                     "attack_success": 100.0 if test_data else None},
        "rows": rows,
        "curve": curve,
        "warnings": [],
    }


def parse_markdown_table(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(headers, {model label: {header: cell}}) of the first Markdown table in `text`."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    headers, body = split[0], split[2:]
    assert all(set(c) <= set("-:") for c in split[1]), split[1]
    assert all(len(r) == len(headers) for r in body)
    return headers, {r[0]: dict(zip(headers, r)) for r in body}


def rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])


def colour_pixels(image: Image.Image, hex_color: str, tolerance: int = 12) -> int:
    """How many pixels are within `tolerance` (per channel) of `hex_color`."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(pixels - rgb(hex_color)).max(axis=-1) <= tolerance).sum())


# --- tables -----------------------------------------------------------------------------------


def test_markdown_table_rows_and_numbers_parse_back():
    summary = make_summary()
    headers, rows = parse_markdown_table(markdown_table(summary))
    assert headers == ["Model", "X (points)", "Channels pruned", "Fraction pruned",
                       "Validation accuracy (%)", "Clean test accuracy (%)",
                       "Attack success rate (%)", "Detection rate (%)", "False alarm rate (%)"]
    assert list(rows) == ["B (original)", "B'_2", "G_2", "B'_4", "G_4", "B'_10", "G_10"]
    original = rows["B (original)"]
    assert original["Validation accuracy (%)"] == "98.65"
    assert original["Clean test accuracy (%)"] == "98.60"
    assert original["Attack success rate (%)"] == "100.00"
    assert original["Channels pruned"] == "0 of 60"
    for row in summary["rows"]:
        x = f"{row['threshold']:g}"
        b, g = rows[f"B'_{x}"], rows[f"G_{x}"]
        for line in (b, g):
            assert line["X (points)"] == x
            assert line["Channels pruned"] == f"{row['channels_pruned']} of {CHANNELS}"
            assert float(line["Fraction pruned"]) == pytest.approx(row["fraction_pruned"],
                                                                   abs=5e-4)
        assert float(b["Validation accuracy (%)"]) == pytest.approx(row["valid_accuracy"],
                                                                    abs=0.005)
        assert re.fullmatch(r"\d+\.\d\d", b["Validation accuracy (%)"])
        assert b["Clean test accuracy (%)"] == f"{row['repaired']['test_accuracy']:.2f}"
        assert b["Attack success rate (%)"] == f"{row['repaired']['attack_success']:.2f}"
        assert b["Detection rate (%)"] == "—"
        for key, header in [("test_accuracy", "Clean test accuracy (%)"),
                            ("attack_success", "Attack success rate (%)"),
                            ("detection_rate", "Detection rate (%)"),
                            ("false_alarm_rate", "False alarm rate (%)")]:
            assert g[header] == f"{row['goodnet'][key]:.2f}"
        assert g["Validation accuracy (%)"] == "—"
    # pruning more channels for a larger X
    pruned = [int(rows[f"B'_{x}"]["Channels pruned"].split()[0]) for x in ("2", "4", "10")]
    assert pruned == sorted(pruned) and pruned[0] < pruned[-1]
    assert "Warnings" not in markdown_table(summary)


def test_summary_without_test_data_has_no_test_columns():
    summary = make_summary(test_data=False)
    text = markdown_table(summary)
    headers, rows = parse_markdown_table(text)
    assert headers == ["Model", "X (points)", "Channels pruned", "Fraction pruned",
                       "Validation accuracy (%)"]
    assert list(rows) == ["B (original)", "B'_2", "B'_4", "B'_10"]  # no GoodNet measured
    assert "attack" not in text.lower() and "test accuracy" not in text.lower()
    assert [r["model"] for r in csv_rows(summary)] == ["B", "B'_2", "B'_4", "B'_10"]
    assert all(r["test_accuracy"] is None and r["attack_success"] is None
               for r in csv_rows(summary))
    page = render_html(summary)
    assert "Clean test accuracy" not in page and "Detection rate" not in page


def test_warnings_and_unreached_threshold_are_reported():
    summary = make_summary()
    summary["rows"][-1]["reached"] = False
    summary["warnings"] = ["threshold 10 was never reached:\nkept the last network",
                           "attack success measured on 12 images only"]
    text = markdown_table(summary)
    _, rows = parse_markdown_table(text)
    assert "B'_10 (not reached)" in rows and "G_10 (not reached)" in rows
    assert "B'_2" in rows
    assert rows["B'_10 (not reached)"]["X (points)"] == "10"
    table_end = text.rindex("|")
    warnings = text[table_end:]
    assert "**Warnings**" in warnings
    assert "- threshold 10 was never reached: kept the last network" in warnings
    assert "- attack success measured on 12 images only" in warnings
    page = render_html(summary)
    assert page.index("<h2>Warnings</h2>") > page.index("</table>")
    assert "attack success measured on 12 images only" in page
    # a threshold with nothing measured renders as missing values, and still plots
    summary["rows"][-1].update(channels_pruned=None, fraction_pruned=None, valid_accuracy=None,
                               repaired=None, goodnet=None)
    _, rows = parse_markdown_table(markdown_table(summary))
    assert rows["B'_10 (not reached)"]["Channels pruned"] == "—"
    assert rows["B'_10 (not reached)"]["Validation accuracy (%)"] == "—"
    assert "G_10 (not reached)" not in rows
    plot_curve(summary, io.BytesIO())


def test_markdown_report_has_title_settings_and_files():
    text = markdown_report(make_summary())
    assert text.startswith("# keras-prune-guard repair report\n")
    assert "pool_3 (60 channels)" in text and "lab3_bd_weights.h5" in text
    assert "`saved_models/repaired_4.keras`" in text
    assert parse_markdown_table(text)[1]["B'_4"]["X (points)"] == "4"
    relative = make_summary()
    relative["relative"] = True
    headers, rows = parse_markdown_table(markdown_report(relative))
    assert headers[1] == "X (% of baseline)" and rows["B'_4"][headers[1]] == "4"
    assert "threshold X relative" in markdown_report(relative)


def test_csv_rows_and_csv_text_match():
    summary = make_summary()
    rows = csv_rows(summary)
    assert [r["model"] for r in rows] == ["B", "B'_2", "G_2", "B'_4", "G_4", "B'_10", "G_10"]
    assert all(tuple(r) == CSV_COLUMNS for r in rows)
    assert rows[0]["threshold"] is None and rows[0]["num_pruned"] == 0
    g4 = rows[4]
    assert g4["threshold"] == 4.0 and g4["detection_rate"] == 6.0
    assert g4["false_alarm_rate"] == summary["rows"][1]["goodnet"]["false_alarm_rate"]
    parsed = list(csv.DictReader(io.StringIO(csv_text(summary))))
    assert len(parsed) == len(rows)
    for text_row, row in zip(parsed, rows):
        assert tuple(text_row) == CSV_COLUMNS
        for key in CSV_COLUMNS:
            if row[key] is None:
                assert text_row[key] == ""
            elif key == "model":
                assert text_row[key] == row[key]
            else:
                assert float(text_row[key]) == row[key]  # repr round-trips exactly


def test_unknown_keys_are_ignored():
    plain = make_summary()
    extra = copy.deepcopy(plain)
    extra["finetuned"] = {"epochs": 3}
    extra["baseline"]["loss"] = 0.12
    for row in extra["rows"]:
        row["finetuned"] = {"test_accuracy": 97.0, "attack_success": 3.0}
        row["seconds"] = 12.5
    extra["curve"][3]["loss"] = 0.5
    assert markdown_table(extra) == markdown_table(plain)
    assert csv_rows(extra) == csv_rows(plain)


def test_bad_summaries_raise_value_errors_naming_the_key():
    with pytest.raises(ValueError, match="summary: expected a dict"):
        markdown_table([1, 2])
    summary = make_summary()
    summary["rows"][1]["valid_accuracy"] = "high"
    with pytest.raises(ReportError, match=r"\['rows'\]\[1\]\['valid_accuracy'\].*'high'"):
        csv_rows(summary)
    summary = make_summary()
    summary["rows"][0]["threshold"] = None
    with pytest.raises(ValueError, match=r"\['rows'\]\[0\]\['threshold'\]"):
        markdown_table(summary)
    summary = make_summary()
    summary["curve"] = []
    with pytest.raises(ValueError, match=r"summary\['curve'\]"):
        plot_curve(summary, io.BytesIO())
    summary = make_summary()
    summary["baseline"]["valid_accuracy"] = float("nan")
    with pytest.raises(ValueError, match="JSON"):
        summary_json(summary)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.integers(0, CHANNELS)),
                min_size=1, max_size=4))
def test_any_numbers_parse_back(values):
    summary = make_summary()
    template = summary["rows"][0]
    summary["rows"] = []
    for i, (valid, attack, pruned) in enumerate(values):
        row = copy.deepcopy(template)
        row.update(threshold=float(i + 1), channels_pruned=pruned,
                   fraction_pruned=pruned / CHANNELS, valid_accuracy=valid)
        row["repaired"]["attack_success"] = attack
        summary["rows"].append(row)
    _, rows = parse_markdown_table(markdown_table(summary))
    parsed = list(csv.DictReader(io.StringIO(csv_text(summary))))
    for i, (valid, attack, pruned) in enumerate(values):
        line = rows[f"B'_{i + 1}"]
        assert line["Validation accuracy (%)"] == f"{valid:.2f}"
        assert line["Attack success rate (%)"] == f"{attack:.2f}"
        assert line["Channels pruned"] == f"{pruned} of {CHANNELS}"
        assert float(parsed[1 + 2 * i]["valid_accuracy"]) == valid
        assert float(parsed[1 + 2 * i]["attack_success"]) == attack


# --- plot and HTML ----------------------------------------------------------------------------


def test_plot_curve_writes_a_real_non_blank_png(tmp_path):
    path = plot_curve(make_summary(), tmp_path / "curve.png")
    assert path == tmp_path / "curve.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 500)
        assert np.asarray(image.convert("L")).astype(float).std() > 20
        assert colour_pixels(image, VALID_COLOR, 4) > 500
        assert colour_pixels(image, ATTACK_COLOR, 4) > 500


def test_plot_curve_without_attack_curve_draws_no_attack_line():
    buffer = io.BytesIO()
    assert plot_curve(make_summary(attack_curve=False), buffer) is None
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert colour_pixels(image, VALID_COLOR, 4) > 500
        assert colour_pixels(image, ATTACK_COLOR, 4) == 0


def data_uris(page: str) -> list[tuple[str, bytes]]:
    return [(mime, base64.b64decode(payload)) for mime, payload in
            re.findall(r'src="data:([\w/+.-]+);base64,([A-Za-z0-9+/=]+)"', page)]


def test_render_html_is_self_contained(tmp_path):
    saliency = tmp_path / "saliency.png"
    Image.fromarray(np.tile(np.arange(64, dtype="uint8")[:, None, None] * 4,
                            (1, 64, 3))).save(saliency)
    summary = make_summary()
    summary["title"] = "Repair <of> B & co"
    page = render_html(summary, {"Saliency (Grad-CAM)": saliency})
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>Repair &lt;of&gt; B &amp; co</title>" in page
    assert "http:" not in page and "https:" not in page
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert re.findall(r'src="([^"]{0,5})', page) == ["data:", "data:"]
    images = data_uris(page)
    assert [m for m, _ in images] == ["image/png", "image/png"]
    assert images[1][1] == saliency.read_bytes()
    with Image.open(io.BytesIO(images[0][1])) as curve:  # drawn in memory
        assert colour_pixels(curve, VALID_COLOR, 4) > 500
    assert page.index("<table>") < page.index(CURVE_FIGURE) < page.index("Saliency (Grad-CAM)")
    assert "<td>B&#x27;_4</td>" in page and "<td>98.65</td>" in page


def test_render_html_rejects_missing_or_unknown_images(tmp_path):
    with pytest.raises(ValueError, match=r"images\['Saliency'\].*no such file"):
        render_html(make_summary(), {"Saliency": tmp_path / "missing.png"})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        render_html(make_summary(), {"Notes": tmp_path / "notes.txt"})


# --- write_report -----------------------------------------------------------------------------


def test_write_report_writes_every_file(tmp_path):
    summary = make_summary()
    summary["warnings"] = ["threshold 30 was never reached"]
    figure = tmp_path / "sal.png"
    Image.new("RGB", (20, 10), (10, 200, 30)).save(figure)
    out = tmp_path / "report"
    paths = write_report(summary, out, figures={"Saliency": figure})
    assert set(paths) == {"md", "csv", "json", "png", "html"}
    assert {p.name for p in out.iterdir()} == {
        "report.md", "report.csv", "report.json", "pruning_curve.png", "report.html"}
    assert json.loads(paths["json"].read_text()) == as_written(summary, paths)
    assert list(csv.DictReader(paths["csv"].open()))[2]["model"] == "G_2"
    assert paths["md"].read_text() == markdown_report(summary)
    page = paths["html"].read_text()
    images = data_uris(page)
    assert images[0][1] == paths["png"].read_bytes()
    assert images[1][1] == figure.read_bytes()
    assert "threshold 30 was never reached" in page


def test_write_report_failure_leaves_previous_files_untouched(tmp_path):
    out = tmp_path / "report"
    write_report(make_summary(test_data=False), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"figures\['Saliency'\]"):
        write_report(make_summary(), out, figures={"Saliency": tmp_path / "absent.png"})
    broken = make_summary()
    broken["curve"][0]["valid_accuracy"] = float("nan")
    with pytest.raises(ValueError, match="JSON"):
        write_report(broken, out)
    no_curve = make_summary()
    no_curve["curve"] = []
    with pytest.raises(ValueError, match=r"summary\['curve'\]"):  # fails while writing
        write_report(no_curve, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .tmp-* left either


# --- the page in a real browser ---------------------------------------------------------------


def test_report_html_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    paths = write_report(make_summary(), tmp_path / "report")
    shot = tmp_path / "shot.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}", "--window-size=1200,1600", paths["html"].resolve().as_uri(),
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"chromium wrote no screenshot (rc {result.returncode}):\n" + (
        result.stderr[-2000:])
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        gray = np.asarray(image.convert("L"))
        assert gray.min() < 60 and gray.max() > 200  # text on a light page, not one colour
        assert colour_pixels(image, VALID_COLOR) > 300  # the plot's lines were drawn
        assert colour_pixels(image, ATTACK_COLOR) > 300


# --- fine-pruning rows ------------------------------------------------------------------------


def make_fine_tuned_summary() -> dict:
    """`make_summary` with B'_X fine-tuned (B''_X, G''_X) at X = 2 and 10, not at 4."""
    summary = make_summary()
    summary["fine_tune"] = {"epochs": 5, "learning_rate": 1e-4, "batch_size": 32,
                            "optimizer": "adam", "data": "the validation data", "images": 600}
    for row in summary["rows"]:
        x = row["threshold"]
        if x == 4.0:
            continue
        row["fine_tuned"] = {
            "epochs": 5,
            "learning_rate": 1e-4,
            "valid_accuracy": 97.5 - x / 10,
            "repaired": {"test_accuracy": 96.25 - x / 10, "attack_success": 1.5 * x},
            "goodnet": {"test_accuracy": 95.125 - x / 10, "attack_success": 0.5 * x,
                        "detection_rate": 90.0 + x / 2, "false_alarm_rate": 1.0 + x / 100},
            "files": {"repaired_keras": f"saved_models/bprime_ft_X{x:g}.keras",
                      "goodnet_savedmodel": f"saved_models/goodnet_ft_X{x:g}"},
        }
    return summary


def test_fine_tuned_rows_in_markdown_and_csv():
    summary = make_fine_tuned_summary()
    _, rows = parse_markdown_table(markdown_table(summary))
    assert list(rows) == ["B (original)", "B'_2", "G_2", "B''_2", "G''_2", "B'_4", "G_4",
                          "B'_10", "G_10", "B''_10", "G''_10"]
    for row in summary["rows"]:
        if "fine_tuned" not in row:
            continue
        x, tuned = f"{row['threshold']:g}", row["fine_tuned"]
        b2, g2 = rows[f"B''_{x}"], rows[f"G''_{x}"]
        for line in (b2, g2):  # B'' keeps the channels B' pruned
            assert line["X (points)"] == x
            assert line["Channels pruned"] == f"{row['channels_pruned']} of {CHANNELS}"
        assert b2["Validation accuracy (%)"] == f"{tuned['valid_accuracy']:.2f}"
        assert b2["Clean test accuracy (%)"] == f"{tuned['repaired']['test_accuracy']:.2f}"
        assert b2["Attack success rate (%)"] == f"{tuned['repaired']['attack_success']:.2f}"
        assert b2["Detection rate (%)"] == "—"
        assert g2["Validation accuracy (%)"] == "—"
        assert g2["Detection rate (%)"] == f"{tuned['goodnet']['detection_rate']:.2f}"
        assert g2["False alarm rate (%)"] == f"{tuned['goodnet']['false_alarm_rate']:.2f}"
        # the pruned-only rows are unchanged by the fine-tuned ones
        assert rows[f"B'_{x}"]["Attack success rate (%)"] == (
            f"{row['repaired']['attack_success']:.2f}")
    rows_csv = csv_rows(summary)
    assert [r["model"] for r in rows_csv] == ["B", "B'_2", "G_2", "B''_2", "G''_2", "B'_4",
                                              "G_4", "B'_10", "G_10", "B''_10", "G''_10"]
    g10 = rows_csv[-1]
    assert g10["threshold"] == 10.0 and g10["attack_success"] == 5.0
    assert g10["detection_rate"] == 95.0 and g10["valid_accuracy"] is None
    parsed = list(csv.DictReader(io.StringIO(csv_text(summary))))
    assert parsed[3]["model"] == "B''_2" and float(parsed[3]["attack_success"]) == 3.0


def test_fine_pruning_table_compares_per_threshold():
    summary = make_fine_tuned_summary()
    text = fine_pruning_table(summary)
    headers, rows = parse_markdown_table(text)
    assert headers == ["X (points)", "Channels pruned",
                       "B' clean accuracy (%)", "B' attack success (%)",
                       "B'' clean accuracy (%)", "B'' attack success (%)",
                       "G clean accuracy (%)", "G attack success (%)",
                       "G'' clean accuracy (%)", "G'' attack success (%)"]
    assert list(rows) == ["2", "10"]  # X = 4 was not fine-tuned
    row10 = summary["rows"][2]
    line = rows["10"]
    assert line["Channels pruned"] == f"{row10['channels_pruned']} of 60"
    assert line["B' attack success (%)"] == f"{row10['repaired']['attack_success']:.2f}"
    assert line["B'' attack success (%)"] == "15.00"
    assert line["B'' clean accuracy (%)"] == "95.25"
    assert line["G clean accuracy (%)"] == f"{row10['goodnet']['test_accuracy']:.2f}"
    assert line["G'' attack success (%)"] == "5.00"
    assert fine_pruning_table(make_summary()) == ""
    unscored = make_fine_tuned_summary()
    for row in unscored["rows"]:
        row["repaired"] = row["goodnet"] = None
        if "fine_tuned" in row:
            row["fine_tuned"]["repaired"] = row["fine_tuned"]["goodnet"] = None
    _, rows = parse_markdown_table(fine_pruning_table(unscored))
    assert set(rows["2"].values()) - {"2", rows["2"]["Channels pruned"]} == {"—"}
    broken = make_fine_tuned_summary()
    broken["rows"][0]["fine_tuned"]["repaired"]["attack_success"] = "low"
    with pytest.raises(ReportError, match=r"\['rows'\]\[0\]\['fine_tuned'\]\['repaired'\]"):
        fine_pruning_table(broken)
    with pytest.raises(ReportError, match=r"\['rows'\]\[0\]\['fine_tuned'\]\['repaired'\]"):
        csv_rows(broken)


def test_fine_tuned_report_files_and_html(tmp_path):
    summary = make_fine_tuned_summary()
    md = markdown_report(summary)
    assert "B''_X is B'_X fine-tuned for 5 epochs on the validation data (Adam, learning " \
           "rate 0.0001 cosine-decayed to 0, 600 images)" in md
    assert md.index("## Pruning only vs fine-pruning") > md.index("| G''_10 |")
    assert fine_pruning_table(summary) in md
    assert "- X = 10, fine-tuned: repaired_keras `saved_models/bprime_ft_X10.keras`" in md
    assert "## Pruning only vs fine-pruning" not in markdown_report(make_summary())
    paths = write_report(summary, tmp_path / "report")
    page = paths["html"].read_text()
    assert '<tr class="fine_tuned"><td>B&#x27;&#x27;_2</td>' in page
    assert '<tr class="goodnet fine_tuned"><td>G&#x27;&#x27;_10</td>' in page
    assert "<h2>Pruning only vs fine-pruning</h2>" in page
    assert page.count("<table") == 2 and "<table" not in render_html(make_summary())[
        render_html(make_summary()).index("</table>"):]
    assert json.loads(paths["json"].read_text()) == as_written(summary, paths)
    assert len(list(csv.DictReader(paths["csv"].open()))) == 11
