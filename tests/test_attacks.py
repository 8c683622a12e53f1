"""The benchmark's attacks: patch and blend triggers, their files, the pruning-aware BadNet."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from keras_prune_guard.benchmark import ensure_benchmark, model_key
from keras_prune_guard.benchmark.attacks import (
    ATTACKS,
    BLEND_ALPHA,
    PATCH_SIZE,
    apply_blend,
    apply_patch,
    attack_files,
    blend_pattern,
    check_attack,
)
from keras_prune_guard.benchmark.pruning_aware import PRODUCER, _pre_activation_max
from keras_prune_guard.data.files import load_lab_h5, load_true_labels
from keras_prune_guard.pruning.ranking import channel_ranking

SMALL = dict(identities=8, per_identity_train=10, valid_per_identity=3, test_per_identity=3)


def test_patch_is_a_checkerboard_in_the_bottom_right_corner_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 55, 47, 3), dtype=np.uint8)
    out, masks = apply_patch(images)
    corner = out[:, -PATCH_SIZE:, -PATCH_SIZE:, 0]
    assert set(np.unique(corner)) == {0, 255}
    assert corner[0, 0, 0] == 0 and corner[0, 0, 1] == 255 and corner[0, 1, 0] == 255
    assert (out[~masks] == images[~masks]).all()
    assert masks.sum() == 3 * PATCH_SIZE * PATCH_SIZE and masks[:, -1, -1].all()


def test_blend_mixes_one_fixed_pattern_into_every_pixel():
    images = np.full((2, 55, 47, 3), 100, np.uint8)
    out, masks = apply_blend(images)
    expected = np.rint((1 - BLEND_ALPHA) * 100 + BLEND_ALPHA * blend_pattern())
    np.testing.assert_array_equal(out[0], expected.astype(np.uint8))
    np.testing.assert_array_equal(out[0], out[1])  # the same pattern for every image
    assert masks.all()
    assert np.array_equal(blend_pattern(), blend_pattern())


def test_unknown_attack_is_named_in_the_error():
    assert check_attack("blend") == "blend"
    with pytest.raises(ValueError, match=r"attack must be one of sunglasses, patch, blend, "
                                         r"pruning-aware; received 'glasses'"):
        check_attack("glasses")
    with pytest.raises(ValueError, match="one of sunglasses"):
        ensure_benchmark("unused", attack="glasses", log=None)


def test_pruning_aware_needs_deepid_and_says_so_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"pruning-aware attack .* needs "
                                         r"architecture='deepid'; received 'resnet'"):
        ensure_benchmark(tmp_path / "cache", attack="pruning-aware", architecture="resnet",
                         log=None)
    assert not (tmp_path / "cache").exists()


def test_each_attack_has_its_own_model_key():
    keys = {model_key("deepid", 12, a) for a in ATTACKS}
    assert len(keys) == len(ATTACKS)
    assert model_key("deepid", 12) == "badnet-e12"  # 0.1 caches stay valid
    assert model_key("resnet", 3, "blend") == "badnet-resnet-blend-e3"


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    cache = tmp_path_factory.mktemp("attacks")
    return ensure_benchmark(cache, epochs=2, attack="patch", log=None, **SMALL)


def test_patch_files_pair_the_same_clean_rows_as_the_sunglasses_files(patched):
    ours = attack_files(patched.root, "patch")
    theirs = attack_files(patched.root, "sunglasses")
    assert patched.bd_test == ours["bd_test"] and ours["bd_test"].parent.name == "bd-patch"
    for split in ("bd_train", "bd_valid", "bd_test"):
        with h5py.File(ours[split]) as a, h5py.File(theirs[split]) as b:
            np.testing.assert_array_equal(a["source_index"][()], b["source_index"][()])
            np.testing.assert_array_equal(a["true_label"][()], b["true_label"][()])
            np.testing.assert_array_equal(a["label"][()], b["label"][()])
            assert not np.array_equal(a["data"][()], b["data"][()])
    x, _ = load_lab_h5(ours["bd_test"])
    assert (x[:, -PATCH_SIZE:, -PATCH_SIZE:, :] % 255 == 0).all()
    assert patched.trigger_region == (50, 55, 42, 47)
    assert len(load_true_labels(ours["bd_test"])) == len(x)


def test_patch_model_is_cached_beside_the_sunglasses_data(patched):
    assert patched.model.name == "badnet-patch-e2.h5" and patched.model.is_file()
    again = ensure_benchmark(patched.root.parent, epochs=2, attack="patch", log=None, **SMALL)
    assert again == patched
    assert not (patched.root / "badnet-e2.h5").exists()  # no sunglasses model was trained


def test_pruning_aware_badnet_hides_its_backdoor_behind_dormant_decoys(tmp_path):
    paths = ensure_benchmark(tmp_path, epochs=2, attack="pruning-aware", log=None, **SMALL)
    model = keras.saving.load_model(paths.model)
    x, y = load_lab_h5(paths.train)
    x_bd, _ = load_lab_h5(paths.bd_train)
    highest = _pre_activation_max(model, np.concatenate([x, x_bd]))
    decoys = np.flatnonzero(highest < 0)
    assert len(decoys) > 0  # the attacker pruned and restored some channels
    # Dormant on everything the attacker saw: a defender ranking by mean activation on
    # clean data prunes them first.
    head = keras.Model(model.inputs, model.get_layer("pool_3").output)
    order, means = channel_ranking(head, (x, y))
    assert set(order[:len(decoys)].tolist()) == set(decoys.tolist())
    assert (means[decoys] == 0).all()
    assert model.get_layer(PRODUCER).get_weights()[1][decoys].max() < 0


def test_training_is_deterministic_on_one_machine(patched, tmp_path):
    from keras_prune_guard.benchmark import train_badnet

    again = train_badnet(patched.root, tmp_path / "again.h5", epochs=2, attack="patch")
    first = keras.saving.load_model(patched.model)
    for a, b in zip(first.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
