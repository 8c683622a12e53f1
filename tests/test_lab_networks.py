"""`repair` on each of the five real BadNets in ../shared/csaw (lab3 and four hackml2020)."""

import json

import keras
import numpy as np
import pytest

from keras_prune_guard import PruneConfig, RunOptions, load_network, repair
from keras_prune_guard.data.files import load_lab_h5

NETWORKS = [  # file stem, input scale, clean faces of 120 B classifies correctly
    ("lab3", "raw", 119),
    ("hackml2020_sunglasses", "unit", 114),
    ("hackml2020_anonymous_1", "unit", 116),
    ("hackml2020_anonymous_2", "unit", 114),
    ("hackml2020_multi_trigger_multi_target", "unit", 111),
]


@pytest.mark.parametrize("stem, scale, correct", NETWORKS)
def test_repair_runs_on_every_lab_network(csaw_dir, tmp_path, stem, scale, correct):
    model = load_network(weights_path=csaw_dir / f"{stem}_bd_weights.h5", input_scale=scale)
    valid = load_lab_h5(csaw_dir / "real_clean_faces.h5", image_shape=(55, 47, 3))
    summary = repair(model, valid, tmp_path, PruneConfig(thresholds=[2, 4, 10]),
                     run=RunOptions(verbose=0))
    assert summary.baseline.valid_accuracy == pytest.approx(correct / 120 * 100)
    pruned = [row.num_pruned for row in summary.rows]
    assert pruned == sorted(pruned) and 0 < pruned[0] < 60
    for row in summary.rows:
        assert row.valid_accuracy <= summary.baseline.valid_accuracy - row.threshold
    # Every written model takes raw 0..255 pixels, whatever B's own scale.
    b_prime = keras.saving.load_model(tmp_path / "bprime_X4.keras")
    pred = b_prime.predict(valid[0], verbose=0).argmax(-1)
    assert np.mean(pred == valid[1]) * 100 == pytest.approx(summary.rows[1].valid_accuracy)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["model"] == model.name

