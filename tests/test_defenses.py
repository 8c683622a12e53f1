"""RNP and ANP: per-channel gates on every conv/BatchNorm layer, learnt on clean data,
folded into the weights, kept at zero through fine-tuning, and run by `repair(defense=)`."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_prune_guard import FineTuneConfig, PruneConfig, deepid, repair
from keras_prune_guard.benchmark.architectures import small_resnet
from keras_prune_guard.config import DefenseConfig
from keras_prune_guard.defend.gates import (
    GatedNetwork,
    find_gates,
    unit_names,
    zero_units,
    zeroed_units,
)
from keras_prune_guard.defend.masks import learn_masks, mask_prune
from keras_prune_guard.defend.rnp import unlearn
from keras_prune_guard.defend.train import train_copy
from keras_prune_guard.model.surgery import insert_channel_mask
from keras_prune_guard.results import RepairResult

CLASSES = 4


@pytest.fixture(scope="module")
def trained():
    """A tiny DeepID that fits 48 random images of 4 classes, and those images."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (48, 55, 47, 3)).astype("float32")
    y = np.arange(48) % CLASSES
    keras.utils.set_random_seed(0)
    model = deepid(num_classes=CLASSES)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=12, batch_size=16, verbose=0)
    return model, (x, y)


def test_gates_cover_convs_and_batchnorm_not_a_conv_that_feeds_batchnorm():
    deep = [(g.layer, g.channels) for g in find_gates(deepid(num_classes=3))]
    assert deep == [("conv_1", 20), ("conv_2", 40), ("conv_3", 60), ("conv_4", 80)]
    names = [g.layer for g in find_gates(small_resnet(3))]
    assert names and all(n.endswith("bn") or "_bn" in n for n in names), names
    assert not any(n.endswith(("_conv1", "_conv2")) for n in names)


def test_a_gate_at_zero_is_the_same_network_as_its_zeroed_weights(trained):
    model, (x, _) = trained
    gated = GatedNetwork(model)
    ones = np.ones(gated.units, "float32")
    np.testing.assert_allclose(gated(x[:8], ones).numpy(), model.predict(x[:8], verbose=0),
                               rtol=1e-5, atol=1e-6)
    units = [3, 25, 70, 150]  # one channel in each conv layer
    mask = ones.copy()
    mask[units] = 0
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    zero_units(copy, units)
    assert zeroed_units(copy) == units and zeroed_units(model) == []
    np.testing.assert_allclose(gated(x[:8], mask).numpy(), copy.predict(x[:8], verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert unit_names(gated.gates)[25] == "conv_2:5"


def test_fine_tuning_keeps_zeroed_channels_at_zero(trained):
    model, data = trained
    b_prime = insert_channel_mask(model)
    zero_units(b_prime, [1, 30, 99])
    b_second = train_copy(b_prime, data, FineTuneConfig(epochs=2, batch_size=16),
                          "cosine:1e-2")
    assert zeroed_units(b_second) == [1, 30, 99]
    assert not np.allclose(b_second.get_layer("conv_1").kernel.numpy(),
                           b_prime.get_layer("conv_1").kernel.numpy())


def test_unlearning_collapses_clean_accuracy_and_leaves_b_alone(trained):
    model, data = trained
    before = [w.copy() for w in model.get_weights()]
    config = DefenseConfig(method="rnp", unlearn_lr=0.05, batch_size=16, unlearn_floor=0.3)
    copy, how = unlearn(model, data, config)
    assert how["accuracy"] <= config.unlearn_floor and how["epochs"] < config.unlearn_epochs
    pred = np.argmax(copy.predict(data[0], verbose=0), -1)
    assert np.mean(pred == data[1]) < 0.5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("method", ["rnp", "anp"])
def test_masks_are_learnt_in_the_unit_interval_and_move(trained, method):
    model, data = trained
    config = DefenseConfig(method=method, batch_size=16, unlearn_lr=0.05, unlearn_epochs=2,
                           mask_epochs=3, anp_steps=12)
    masks = learn_masks(model, data, config, log=None)
    assert masks.shape == (200,)
    assert masks.min() >= 0 and masks.max() <= 1 and masks.min() < 1


def test_mask_sweep_prunes_in_mask_order_until_each_threshold(trained):
    model, (x, y) = trained
    config = DefenseConfig(method="anp", batch_size=16, anp_steps=12)
    pruned = mask_prune(model, (x, y), PruneConfig(thresholds=(2, 10)), config,
                        run=None)
    sweep, masks = pruned.sweep, np.asarray(pruned.sweep.channel_means)
    assert sweep.channels == 200 and sweep.layer == "conv_1+conv_2+conv_3+conv_4"
    order = sweep.channel_order
    assert all(masks[a] <= masks[b] + 1e-6 for a, b in zip(order, order[1:]))
    for t, snap in sweep.snapshots.items():
        b_prime = pruned.snapshots[t]
        assert zeroed_units(b_prime) == sorted(snap.pruned_channels)
        acc = 100 * np.mean(np.argmax(b_prime.predict(x, verbose=0), -1) == y)
        assert acc == pytest.approx(snap.valid_accuracy)
        assert snap.valid_accuracy <= sweep.baseline_valid_accuracy - t + 1e-9


@pytest.mark.slow
def test_repair_with_rnp_writes_b_second_and_reports_the_defense(trained, tmp_path):
    model, (x, y) = trained
    result = repair(model, (x, y), tmp_path / "out", PruneConfig(thresholds=(4,)),
                    test=(x, y), poisoned=(x, np.zeros_like(y)),
                    fine_tune=FineTuneConfig(epochs=1, learning_rate=1e-3, batch_size=16),
                    defense=DefenseConfig(method="rnp", batch_size=16, unlearn_lr=0.05,
                                          unlearn_epochs=2, mask_epochs=2),
                    formats=("savedmodel",), verbose=0)
    row = result.rows[0]
    b_second = keras.saving.load_model(row.fine_tuned.files["repaired_keras"])
    assert len(zeroed_units(b_second)) == row.num_pruned > 0
    saved = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert saved["defense"]["method"] == "rnp" and saved["defense_seconds"] > 0
    again = RepairResult.from_dict(saved)
    assert again.defense == result.defense
    assert "RNP mask" in (tmp_path / "out" / "report" / "report.md").read_text()


def test_bad_defenses_are_refused_before_any_work(trained, tmp_path):
    model, (x, y) = trained
    with pytest.raises(ValueError, match="method must be one of"):
        DefenseConfig(method="nc")
    with pytest.raises(ValueError, match="anp_eps must be a number in"):
        DefenseConfig(anp_eps=2.0)
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match="needs valid as"):
        repair(model, stream, tmp_path / "out", defense="anp", verbose=0)
    assert not (tmp_path / "out").exists()


def test_cli_defense_options_build_one_defense_config():
    from keras_prune_guard.cli.commands import defense
    from keras_prune_guard.cli.parser import build_parser

    args = build_parser().parse_args(["repair", "--model", "m.keras", "--valid", "v.h5",
                                      "--defense", "anp", "--anp-steps", "50"])
    assert defense(args) == DefenseConfig(method="anp", anp_steps=50)
