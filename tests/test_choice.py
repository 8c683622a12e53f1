"""Fine-pruning chosen on clean data alone: schedules, the hold-out, the choice and its record."""

from __future__ import annotations

import numpy as np
import pytest

from keras_prune_guard import FineTuneConfig, prune
from keras_prune_guard.benchmark import ensure_benchmark
from keras_prune_guard.data.files import load_lab_h5
from keras_prune_guard.defend.choice import choose_fine_tune, split_holdout
from keras_prune_guard.defend.finetune import augmentation, fine_tune
from keras_prune_guard.defend.schedules import (
    CyclicSchedule,
    build_schedule,
    parse_schedule,
    settled,
)
from keras_prune_guard.model.loading import load_network
from keras_prune_guard.model.surgery import find_channel_mask
from keras_prune_guard.results import FineTuneChoice, RepairResult

SMALL = dict(identities=8, per_identity_train=10, valid_per_identity=6, test_per_identity=3)


def test_schedule_specs_are_parsed_and_refused_with_the_spec_named():
    assert parse_schedule("cyclic:1e-2") == ("cyclic", 0.01)
    for bad in ("cyclic", "step:1e-2", "cosine:-1", "cosine:nan", 3):
        with pytest.raises(ValueError, match="SHAPE:PEAK"):
            parse_schedule(bad)
    with pytest.raises(ValueError, match=r"Received: 'cosine:x'"):
        FineTuneConfig(schedules=("cyclic:1e-2", "cosine:x"))
    with pytest.raises(ValueError, match="non-empty list"):
        FineTuneConfig(schedules="cyclic:1e-2")


def test_cyclic_schedule_rises_to_its_peak_and_settles_at_each_cycle_end():
    schedule = CyclicSchedule(1e-2, cycle_steps=100)
    values = [float(schedule(s)) for s in (0, 50, 100, 150)]
    np.testing.assert_allclose(values, [4e-4, 1e-2, 4e-4, 1e-2], rtol=1e-5)
    assert float(build_schedule("cosine:1e-3", 4, 10)(40)) == pytest.approx(0.0, abs=1e-9)
    assert [e for e in range(1, 8) if settled("cyclic:1e-2", e, 7)] == [2, 4, 6, 7]
    assert all(settled("cosine:1e-3", e, 7) for e in range(1, 8))


@pytest.mark.parametrize("field,value,message", [
    ("holdout", 0.0, r"holdout must be a number in \(0, 1\)"),
    ("holdout", 1.0, r"holdout must be a number in \(0, 1\)"),
    ("tolerance", -1, r"tolerance must be a number in \[0, 100\]"),
    ("min_per_class", "3", "min_per_class must be a number"),
    ("augment", "flip", "augment must be one of"),
    ("learning_rate", 0.0, "learning_rate must be > 0"),
])
def test_fine_tune_config_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**{field: value})


def test_holdout_split_is_seeded_disjoint_and_complete():
    x, y = np.arange(50, dtype="float32")[:, None], np.arange(50)
    (xt, yt), (xh, yh) = split_holdout((x, y), 0.2, seed=3)
    assert len(xh) == 10 and len(xt) == 40
    assert sorted(np.concatenate([yt, yh]).tolist()) == list(range(50))
    again = split_holdout((x, y), 0.2, seed=3)[1][1]
    other = split_holdout((x, y), 0.2, seed=4)[1][1]
    assert np.array_equal(again, yh) and not np.array_equal(other, yh)


def test_augmentation_changes_images_but_keeps_their_shape():
    images = np.random.default_rng(0).uniform(0, 255, (4, 55, 47, 3)).astype("float32")
    changed = np.asarray(augmentation("shift-flip", seed=0)(images, training=True))
    assert changed.shape == images.shape and not np.allclose(changed, images)
    assert augmentation("none", seed=0) is None


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    paths = ensure_benchmark(tmp_path_factory.mktemp("choice"), epochs=3, log=None, **SMALL)
    model = load_network(paths.model)
    valid = load_lab_h5(paths.valid)
    b_prime = prune(model, valid, thresholds=[4], verbose=0).snapshots[4.0]
    return model, b_prime, valid


def test_too_few_clean_images_keep_b_prime_with_the_reason(small):
    model, b_prime, (x, y) = small
    config = FineTuneConfig(epochs=2, min_per_class=7)  # 6 per class here
    chosen = choose_fine_tune(b_prime, (x, y), config, original=model)
    assert chosen.model is b_prime and chosen.choice.kept_b_prime
    assert "48 clean images for 8 classes (6.00 per class" in chosen.choice.reason
    assert chosen.choice.candidates == []


def test_the_first_schedule_within_the_tolerance_is_chosen_at_its_latest_such_epoch(small):
    model, b_prime, valid = small
    config = FineTuneConfig(epochs=4, schedules=("cyclic:1e-2", "cosine:1e-3"), tolerance=100)
    chosen = choose_fine_tune(b_prime, valid, config, original=model)
    choice = chosen.choice
    assert choice.schedule == "cyclic:1e-2" and len(choice.candidates) == 1
    assert choice.epoch == 4 and sorted(choice.candidates[0].epoch_accuracy) == [2, 4]
    assert choice.holdout_images == 10 and choice.images == 48
    pruned = find_channel_mask(b_prime).pruned_channels()
    assert find_channel_mask(chosen.model).pruned_channels() == pruned
    # The record survives report.json.
    row = {"threshold": 4, "fine_tuned": {"valid_accuracy": 1.0, "train_loss": [],
                                          "choice": choice.to_dict()}}
    back = RepairResult.from_dict({"rows": [row], "config": {"thresholds": [4]}})
    assert back.rows[0].fine_tuned.choice == choice


def test_no_schedule_within_the_tolerance_falls_back_to_the_best_or_keeps_b_prime(small):
    model, b_prime, valid = small
    config = FineTuneConfig(epochs=2, schedules=("cyclic:1e-1", "cosine:1e-3"), tolerance=0)
    chosen = choose_fine_tune(b_prime, valid, config, original=model)
    choice = chosen.choice
    assert len(choice.candidates) == 2  # every schedule was tried
    best = max(c.holdout_accuracy for c in choice.candidates)
    if best > choice.pruned_accuracy:
        assert choice.schedule is not None and "kept the best held-out accuracy" in choice.reason
    else:
        assert chosen.model is b_prime and "kept B'" in choice.reason
    assert isinstance(choice, FineTuneChoice)


def test_fine_tune_with_a_fixed_rate_is_seeded(small):
    _, b_prime, valid = small
    config = FineTuneConfig(epochs=1, learning_rate=1e-3)
    a, b = fine_tune(b_prime, valid, config), fine_tune(b_prime, valid, config)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
