"""`repair` on each of the five real BadNets in ../shared/csaw (lab3 and four hackml2020)."""

import json

import keras
import numpy as np
import pytest

from keras_prune_guard import GoodNetModel, PruneConfig, RunOptions, load_network, repair
from keras_prune_guard.data.files import load_lab_h5
from keras_prune_guard.report.saliency import saliency_maps

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


def test_saliency_works_on_a_goodnets_parts(lab3_model, real_sunglasses, tmp_path):
    x = real_sunglasses[0][:4]
    valid = (real_sunglasses[0], real_sunglasses[1])
    from keras_prune_guard import prune

    b_prime = prune(lab3_model, valid, thresholds=[50], relative=True).snapshots[50.0]
    goodnet = GoodNetModel(lab3_model, b_prime)
    for part, whole in ((goodnet.bad_network(), lab3_model), (goodnet.repaired_network(), b_prime)):
        np.testing.assert_allclose(saliency_maps(part, x), saliency_maps(whole, x), atol=1e-4)
