"""The benchmark comparison report: real repairs of two tiny BadNets, and hand-made results."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from matplotlib.image import imread

from keras_prune_guard.benchmark import ensure_benchmark
from keras_prune_guard.config import FineTuneConfig, PruneConfig, RunOptions
from keras_prune_guard.data.files import load_lab_h5
from keras_prune_guard.model.loading import load_network
from keras_prune_guard.repair import repair
from keras_prune_guard.report.comparison import (
    COLUMNS,
    PANEL_SIZE,
    PLOT_DPI,
    comparison_html,
    comparison_markdown,
    comparison_rows,
    plot_comparison,
    write_comparison,
)
from keras_prune_guard.report.plot import ATTACK_COLOR
from keras_prune_guard.results import RepairResult, ReportError

TINY = dict(identities=6, per_identity_train=4, valid_per_identity=2, test_per_identity=3)
REAL_ATTACKS = ("sunglasses", "patch")


@pytest.fixture(scope="module")
def real_results(tmp_path_factory) -> dict[str, RepairResult]:
    """`repair` (pruning only, X = 2, 10) of a 1-epoch BadNet per attack."""
    cache = tmp_path_factory.mktemp("cache")
    out = {}
    for attack in REAL_ATTACKS:
        paths = ensure_benchmark(cache, epochs=1, attack=attack, log=None, **TINY)
        model = load_network(paths.model)
        out[attack] = repair(
            model, load_lab_h5(paths.valid), tmp_path_factory.mktemp(attack),
            PruneConfig(thresholds=(2, 10)), test=load_lab_h5(paths.test),
            poisoned=load_lab_h5(paths.bd_test), fine_tune=FineTuneConfig(epochs=0),
            run=RunOptions(verbose=0))
    return out


def _scores(acc, asr, detection=None, false_alarm=None) -> dict:
    return {"test_accuracy": acc, "attack_success": asr, "detection_rate": detection,
            "false_alarm_rate": false_alarm, "robust_accuracy": None}


def _choice(schedule: str | None) -> dict:
    return {"schedule": schedule, "epoch": None if schedule is None else 3, "reason": "test",
            "images": 40, "holdout_images": 8, "tolerance": 3.0}


def _row(x: float, pruned: int, tuned_acc, tuned_asr, detection, schedule) -> dict:
    return {"threshold": x, "reached": True, "num_pruned": pruned, "fraction_pruned": pruned / 20,
            "valid_accuracy": 90.0, "pruned_channels": list(range(pruned)),
            "repaired": _scores(91.0, 60.0), "goodnet": _scores(90.5, 40.0, 55.0, 1.5),
            "fine_tuned": {"valid_accuracy": 94.0, "train_loss": [0.5],
                           "repaired": _scores(tuned_acc, tuned_asr),
                           "goodnet": _scores(tuned_acc - 1, tuned_asr, detection, 2.0),
                           "choice": _choice(schedule)}}


def hand_made(model: str = "deepid", tuned_asr: float = 1.0, tuned_acc: float = 95.0,
              detection: float = 97.0) -> RepairResult:
    """B (96% clean, 100% ASR); X=2 fine-pruned to the given figures; X=4 keeps B'."""
    curve = [{"step": k, "channel": k or None, "num_pruned": k, "fraction_pruned": k / 20,
              "valid_accuracy": 96.0 - k, "attack_success": 100.0 - 5 * k} for k in range(11)]
    return RepairResult.from_dict({
        "model": model, "layer": "conv_3", "channels": 20, "num_classes": 6,
        "config": {"thresholds": [2, 4]},
        "baseline": {"valid_accuracy": 96.0, "test_accuracy": 96.0, "attack_success": 100.0},
        "rows": [_row(2, 4, tuned_acc, tuned_asr, detection, "cyclic:1e-2"),
                 _row(4, 6, 93.5, 30.0, 70.0, None)],
        "curve": curve,
    })


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of the comparison table's body lines (its first table only)."""
    text = markdown.splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("| "))
    lines = []
    for line in text[start:]:
        if not line.startswith("| "):
            break
        lines.append(line)
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_markdown_has_one_row_per_model_with_the_exact_numbers(real_results):
    rows = table_rows(comparison_markdown(real_results))
    expected = []
    for attack, result in real_results.items():
        base = result.baseline
        expected.append([attack, "B", f"0 of {result.channels}", f"{base.test_accuracy:.2f}",
                         f"{base.attack_success:.2f}", "—", "—", "—", ""])
        for row in result.rows:
            x, pruned = f"{row.threshold:g}", f"{row.num_pruned} of {result.channels}"
            b, g = row.repaired, row.goodnet
            expected.append([attack, f"B' X={x}", pruned, f"{b.test_accuracy:.2f}",
                             f"{b.attack_success:.2f}", "—", "—", "—", ""])
            expected.append([attack, f"G X={x}", pruned, f"{g.test_accuracy:.2f}",
                             f"{g.attack_success:.2f}", "—", f"{g.detection_rate:.2f}",
                             f"{g.false_alarm_rate:.2f}", ""])
    assert rows == expected
    assert len(rows) == len(REAL_ATTACKS) * (1 + 2 * 2)


def test_rows_of_fine_pruned_models_carry_their_schedule():
    rows = comparison_rows({"patch": hand_made()})
    assert [r["model"] for r in rows] == ["B", "B' X=2", "G X=2", "B'' X=2", "G'' X=2",
                                          "B' X=4", "G X=4", "B'' X=4", "G'' X=4"]
    assert [r["defense"] for r in rows[:4]] == ["none", "pruning", "pruning", "fine-pruning"]
    assert [r["schedule"] for r in rows] == ["", "", "", "cyclic:1e-2", "cyclic:1e-2",
                                             "", "", "kept B'", "kept B'"]
    g2 = rows[4]
    assert (g2["num_pruned"], g2["fraction_pruned"], g2["detection_rate"]) == (4, 0.2, 97.0)
    assert g2["test_accuracy"] == 94.0 and g2["false_alarm_rate"] == 2.0


def goal_lines(markdown: str) -> list[str]:
    return markdown.split("## Goal", 1)[1].strip().splitlines()[2:]


@pytest.mark.parametrize("figures, status", [
    (dict(tuned_asr=1.0, tuned_acc=95.0, detection=97.0), "met"),
    (dict(tuned_asr=4.99, tuned_acc=93.0, detection=90.0), "met"),  # every bound just met
    (dict(tuned_asr=5.0, tuned_acc=95.0, detection=97.0), "not met"),
    (dict(tuned_asr=1.0, tuned_acc=92.9, detection=97.0), "not met"),
    (dict(tuned_asr=1.0, tuned_acc=95.0, detection=89.9), "not met"),
])
def test_goal_says_met_or_not_met_with_the_figures(figures, status):
    lines = goal_lines(comparison_markdown({"blend": hand_made(**figures)}))
    summary = {"met": "met at X=2; not met at X=4", "not met": "not met at X=2, 4"}[status]
    assert lines[0] == f"- **blend**: {summary}."
    assert lines[1].startswith(f"  - X=2: {status} — ASR {figures['tuned_asr']:.2f}% ")
    drop = 96.0 - figures["tuned_acc"]
    assert f"clean accuracy {figures['tuned_acc']:.2f}% (B 96.00%, drop {drop:.2f}" in lines[1]
    assert f"G'' detection {figures['detection']:.2f}%" in lines[1]
    # X=4 kept B': it is judged on B'_4's and G_4's figures, not on its own.
    assert lines[2].startswith("  - X=4: not met — ASR 60.00% >= 5%")


def test_goal_without_fine_pruning_is_not_judged(real_results):
    lines = goal_lines(comparison_markdown(real_results))
    assert lines[0] == "- **sunglasses**: not fine-pruned at X=2, 10."
    assert lines[1] == "  - X=2: not fine-pruned — no B'' was built."


def test_markdown_lists_the_meta_lines_under_the_title():
    text = comparison_markdown({"patch": hand_made()}, title="Bench",
                               meta={"machine": "2 cores", "time taken": "12 s"})
    assert text.startswith("# Bench\n\n- **machine**: 2 cores\n- **time taken**: 12 s\n\n| ")


def test_html_escapes_every_text_and_embeds_the_plot(tmp_path):
    results = {"<i>blend</i>": hand_made(model="<script>alert(1)</script>")}
    png = plot_comparison(results, tmp_path / "c.png")
    page = comparison_html(results, "<script>t</script>", {"cmd": "a<b"}, plot_path=png)
    assert "<script>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;i&gt;blend&lt;/i&gt;" in page and "a&lt;b" in page
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(uri[1]) == png.read_bytes()
    assert page.count('<tr class="fine-pruning">') == 4
    assert page.count('<li class="met">') == 1 and page.count('<li class="not-met">') == 1


def _red(image: np.ndarray) -> np.ndarray:
    """Where the pixels have the attack-success colour."""
    target = np.array([int(ATTACK_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.all(np.abs(image[..., :3] - target) < 0.02, axis=-1)


def test_plot_has_one_panel_per_attack(real_results, tmp_path):
    width, height = (int(s * PLOT_DPI) for s in PANEL_SIZE)
    two = imread(plot_comparison(real_results, tmp_path / "two.png"))
    assert two.shape[:2] == (height, 2 * width)
    red = _red(two)
    assert red[:, :width].any() and red[:, width:].any()
    three = imread(plot_comparison({**real_results, "blend": hand_made()}, tmp_path / "3.png"))
    assert three.shape[:2] == (2 * height, 2 * width)
    red = _red(three)
    assert red[height:, :width].any() and not red[height:, width:].any()
    assert np.all(three[height + 10:-10, width + 10:-10, :3] == 1.0)  # no fourth panel


def test_write_comparison_writes_four_files_and_json_round_trips(real_results, tmp_path):
    results = {**real_results, "blend": hand_made()}
    meta = {"machine": "2 cores", "command": "keras-prune-guard benchmark"}
    paths = write_comparison(results, tmp_path / "out", meta=meta)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparison.html", "comparison.json", "comparison.md", "comparison.png"]
    assert paths["md"].read_text() == comparison_markdown(results, meta=meta)
    assert paths["html"].read_text() == comparison_html(results, meta=meta,
                                                        plot_path=paths["png"])
    data = json.loads(paths["json"].read_text())
    assert data.pop("meta") == meta
    assert list(data) == [*REAL_ATTACKS, "blend"]
    for attack, result in results.items():
        back = RepairResult.from_dict(data[attack])
        assert back.to_dict() == result.to_dict()
        assert back.rows[0].fine_tuned is None or back.rows[0].fine_tuned.choice.epoch == 3


def test_bad_results_write_nothing(tmp_path):
    with pytest.raises(ReportError, match="at least one"):
        comparison_markdown({})
    with pytest.raises(ReportError, match="may not be named 'meta'"):
        write_comparison({"meta": hand_made()}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
