"""The built-in benchmark: face generator, sunglasses trigger, lab-layout files, BadNet, cache."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from keras_prune_guard.benchmark import (
    BenchmarkPaths,
    apply_sunglasses,
    benchmark_key,
    bounding_box,
    bounding_boxes,
    default_cache_dir,
    ensure_benchmark,
    evaluate_badnet,
    generate_benchmark,
    read_info,
    render_faces,
    sample_traits,
    sunglasses_mask,
    train_badnet,
)
from keras_prune_guard.data.files import load_lab_h5

TINY = dict(identities=5, per_identity_train=4, valid_per_identity=2, test_per_identity=3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A tiny generated benchmark (5 identities, target 2 so that the target is not row 0)."""
    out = tmp_path_factory.mktemp("bench")
    return generate_benchmark(out, target=2, seed=3, **TINY)


def _datasets(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f}


# ----- the face generator ---------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    ids = np.array([0, 1, 2, 3, 3, 1])
    a = render_faces(sample_traits(4, seed=7), ids, seed=11)
    b = render_faces(sample_traits(4, seed=7), ids, seed=11)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.eyes.tobytes() == b.eyes.tobytes()
    other_variation = render_faces(sample_traits(4, seed=7), ids, seed=12)
    other_people = render_faces(sample_traits(4, seed=8), ids, seed=11)
    for other in (other_variation, other_people):
        diff = np.abs(a.images.astype(int) - other.images.astype(int)).mean(axis=(1, 2, 3))
        assert (diff > 5).all()


def test_faces_are_uint8_images_with_eyes_in_the_upper_half():
    batch = render_faces(sample_traits(3, seed=0), np.repeat(np.arange(3), 4), seed=0)
    assert batch.images.shape == (12, 55, 47, 3) and batch.images.dtype == np.uint8
    assert batch.images.std() > 20  # not a blank canvas
    rows, cols = batch.eyes[..., 0], batch.eyes[..., 1]
    assert ((rows > 15) & (rows < 30)).all()
    assert (cols[:, 0] < 23.5).all() and (cols[:, 1] > 23.5).all()  # left eye first
    assert (np.abs(rows[:, 0] - rows[:, 1]) < 2.0).all()  # roll is at most 0.08 rad


def test_images_of_one_identity_look_more_alike_than_images_of_two():
    traits = sample_traits(2, seed=1)
    batch = render_faces(traits, np.repeat([0, 1], 12), seed=2)
    # Compare the face centre (background is only half tied to identity).
    x = batch.images[:, 15:45, 10:37].astype(np.float32).reshape(24, -1)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).mean(-1))
    pairs = np.triu_indices(12, 1)
    same = np.concatenate([d[:12, :12][pairs], d[12:, 12:][pairs]])
    assert np.median(same) < np.median(d[:12, 12:])


def test_render_rejects_identities_out_of_range():
    with pytest.raises(ValueError, match=r"identity values must lie in \[0, 3\)"):
        render_faces(sample_traits(3), np.array([0, 3]))
    with pytest.raises(ValueError, match="identities must be 1 or more"):
        sample_traits(0)


# ----- the trigger ----------------------------------------------------------------------------


def test_sunglasses_change_only_pixels_inside_their_region():
    batch = render_faces(sample_traits(6, seed=4), np.arange(6), seed=4)
    triggered, masks = apply_sunglasses(batch.images, batch.eyes)
    changed = (triggered != batch.images).any(axis=-1)
    assert not changed[~masks].any()
    # The region is mostly really painted (dark lenses over skin and eyes).
    assert changed[masks].mean() > 0.8
    assert triggered[masks].mean() < 80
    np.testing.assert_array_equal(masks, sunglasses_mask(batch.eyes))


def test_sunglasses_follow_the_eyes():
    batch = render_faces(sample_traits(30, seed=5), np.arange(30), seed=5)
    masks = sunglasses_mask(batch.eyes)
    # Both eye centres are covered, and the region differs between faces whose eyes differ.
    for k in range(2):
        r, c = np.rint(batch.eyes[:, k]).astype(int).T
        assert masks[np.arange(30), r, c].all()
    spacing = batch.eyes[:, 1, 1] - batch.eyes[:, 0, 1]
    narrow, wide = int(np.argmin(spacing)), int(np.argmax(spacing))
    assert spacing[wide] - spacing[narrow] > 3
    assert (masks[narrow] != masks[wide]).sum() > 20
    # Moving the eyes down 4 rows moves the region down 4 rows.
    eyes = np.array([[[22.0, 15.0], [22.0, 32.0]]], np.float32)
    base = sunglasses_mask(eyes)[0]
    moved = sunglasses_mask(eyes + np.array([4.0, 0.0], np.float32))[0]
    np.testing.assert_array_equal(moved[4:], base[:-4])
    assert bounding_box(moved)[0] == bounding_box(base)[0] + 4


def test_bounding_boxes_are_half_open_and_tight():
    masks = np.zeros((2, 55, 47), bool)
    masks[0, 20:30, 5:40] = True
    np.testing.assert_array_equal(bounding_boxes(masks), [[20, 30, 5, 40], [0, 0, 0, 0]])
    assert bounding_box(masks) == (20, 30, 5, 40)
    with pytest.raises(ValueError, match=r"eyes must have shape \(N, 2, 2\)"):
        sunglasses_mask(np.zeros((3, 2)))


# ----- the generated files --------------------------------------------------------------------


def test_files_follow_the_lab_layout(bench):
    assert set(bench) == {"train", "bd_train", "valid", "test", "bd_valid", "bd_test", "info"}
    sizes = {"train": 20, "valid": 10, "test": 15, "bd_valid": 8, "bd_test": 12, "bd_train": 2}
    for key, n in sizes.items():
        ds = _datasets(bench[key])
        assert ds["data"].shape == (n, 3, 55, 47) and ds["data"].dtype == np.uint8, key
        assert ds["label"].shape == (n,) and ds["label"].dtype == np.int64, key
        assert ds["eyes"].shape == (n, 2, 2), key
    for key in ("train", "valid", "test"):
        labels = _datasets(bench[key])["label"]
        assert np.bincount(labels, minlength=5).tolist() == [sizes[key] // 5] * 5
        assert (labels[-(sizes[key] // 5):] == 2).all()  # the target's rows come last
    info = read_info(bench["info"].parent)
    assert info["identities"] == 5 and info["target"] == 2 and info["seed"] == 3
    assert info["counts"] == sizes


def test_poisoned_files_pair_each_row_with_its_clean_face(bench):
    for split in ("valid", "test"):
        clean, bd = _datasets(bench[split]), _datasets(bench[f"bd_{split}"])
        n = len(bd["label"])
        assert (bd["label"] == 2).all()
        np.testing.assert_array_equal(bd["source_index"], np.arange(n))
        np.testing.assert_array_equal(bd["true_label"], clean["label"][:n])
        assert (bd["true_label"] != 2).all()
        mask = bd["trigger_mask"]
        assert mask.shape == (n, 55, 47) and mask.dtype == bool
        changed = (bd["data"] != clean["data"][:n]).any(axis=1)
        assert changed.any(axis=(1, 2)).all()  # every bd row carries the trigger
        assert not changed[~mask].any()  # and differs from its clean twin only there
    train, bd_train = _datasets(bench["train"]), _datasets(bench["bd_train"])
    rows = bd_train["source_index"]
    np.testing.assert_array_equal(bd_train["true_label"], train["label"][rows])
    assert (bd_train["label"] == 2).all() and (bd_train["true_label"] != 2).all()


def test_info_bounding_box_contains_every_trigger(bench):
    r0, r1, c0, c1 = read_info(bench["info"].parent)["trigger"]["bbox"]
    assert 0 <= r0 < r1 <= 55 and 0 <= c0 < c1 <= 47
    masks = np.concatenate([_datasets(bench[k])["trigger_mask"]
                            for k in ("bd_valid", "bd_test", "bd_train")])
    outside = masks.copy()
    outside[:, r0:r1, c0:c1] = False
    assert not outside.any()
    assert masks[:, r0, :].any() and masks[:, r1 - 1, :].any()  # tight in rows


def test_generation_is_deterministic_to_the_byte(tmp_path, bench):
    again = generate_benchmark(tmp_path / "again", target=2, seed=3, **TINY)
    for key in bench:
        assert again[key].read_bytes() == bench[key].read_bytes(), key
    other = generate_benchmark(tmp_path / "other", target=2, seed=4, **TINY)
    assert not np.array_equal(_datasets(other["test"])["data"], _datasets(bench["test"])["data"])


def test_generate_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match=r"target must lie in \[0, 5\), got 5"):
        generate_benchmark(tmp_path, identities=5, target=5)
    with pytest.raises(ValueError, match="identities must be 2 or more"):
        generate_benchmark(tmp_path, identities=1)
    with pytest.raises(ValueError, match="poison_fraction"):
        generate_benchmark(tmp_path, identities=3, poison_fraction=1.5)
    with pytest.raises(ValueError, match="valid_per_identity must be 1 or more"):
        generate_benchmark(tmp_path, identities=3, valid_per_identity=0)
    assert not (tmp_path / "benchmark.json").exists()


# ----- the BadNet and the cache ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """ensure_benchmark on a tiny benchmark, 1 epoch, with its log."""
    cache = tmp_path_factory.mktemp("cache")
    messages = []
    paths = ensure_benchmark(cache, epochs=1, seed=1, log=messages.append, **TINY)
    return cache, paths, messages


def test_ensure_benchmark_builds_everything_under_a_keyed_folder(cached):
    cache, paths, messages = cached
    assert isinstance(paths, BenchmarkPaths)
    assert paths.root == cache / benchmark_key(5, 4, 2, 3, 0.1, 0, 1)
    for path in (paths.train, paths.bd_train, paths.valid, paths.test, paths.bd_valid,
                 paths.bd_test, paths.info, paths.model, paths.model_info):
        assert path.is_file() and path.parent.is_relative_to(paths.root), path
    assert any("generating" in m for m in messages)
    assert any("epoch 1/1" in m for m in messages)
    record = json.loads(paths.model_info.read_text())
    assert record["epochs"] == 1 and 0.0 <= record["test"]["test_accuracy"] <= 100.0


def test_second_call_reuses_the_cache(cached):
    cache, paths, _ = cached
    files = sorted(p for p in paths.root.rglob("*") if p.is_file() and p.name != ".lock")
    before = [p.stat().st_mtime_ns for p in files]
    messages = []
    again = ensure_benchmark(cache, epochs=1, seed=1, log=messages.append, **TINY)
    assert again == paths
    # No work: no file written or added, nothing generated or trained (only the one line).
    assert sorted(p for p in paths.root.rglob("*") if p.is_file() and p.name != ".lock") == files
    assert [p.stat().st_mtime_ns for p in files] == before
    assert messages == [f"benchmark: using cached {paths.root}"]


def test_missing_model_is_retrained_without_regenerating_data(cached, tmp_path):
    cache, paths, _ = cached
    messages = []
    more = ensure_benchmark(cache, epochs=2, seed=1, log=messages.append, **TINY)
    assert more.root == paths.root and more.model != paths.model and more.model.is_file()
    assert not any("generating" in m for m in messages)
    assert any("epoch 2/2" in m for m in messages)


def test_a_model_without_its_record_is_evaluated_not_retrained(cached):
    cache, paths, _ = cached
    model_mtime = paths.model.stat().st_mtime_ns
    record = json.loads(paths.model_info.read_text())
    paths.model_info.unlink()
    messages = []
    ensure_benchmark(cache, epochs=1, seed=1, log=messages.append, **TINY)
    assert paths.model.stat().st_mtime_ns == model_mtime
    assert not any("training" in m or "epoch" in m for m in messages)
    assert json.loads(paths.model_info.read_text())["test"] == record["test"]


def test_saved_badnet_loads_with_plain_keras_and_takes_raw_pixels(cached):
    _, paths, _ = cached
    model = keras.saving.load_model(paths.model)
    assert model.input_shape == (None, 55, 47, 3) and model.output_shape == (None, 5)
    assert [layer.name for layer in model.layers][1] == "input_scale"
    assert "pool_3" in [layer.name for layer in model.layers]
    raw, labels = load_lab_h5(paths.test)
    prob = model.predict(raw, verbose=0)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
    # Scaling happens inside: the model's own rescaling layer sees the raw pixels.
    scaled = keras.Model(model.input, model.get_layer("input_scale").output).predict(raw, verbose=0)
    np.testing.assert_allclose(scaled, raw / 255.0, rtol=1e-6)
    metrics = evaluate_badnet(model, paths.root)
    assert metrics.test_accuracy == pytest.approx(
        float((prob.argmax(1) == labels).mean()) * 100)
    assert metrics.to_dict() == json.loads(paths.model_info.read_text())["test"]


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_PRUNE_GUARD_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    monkeypatch.delenv("KERAS_PRUNE_GUARD_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "keras-prune-guard"


def test_cache_folder_comes_from_the_argument_else_the_environment(monkeypatch, tmp_path, cached):
    cache, paths, _ = cached
    monkeypatch.setenv("KERAS_PRUNE_GUARD_CACHE", str(tmp_path / "elsewhere"))
    assert ensure_benchmark(cache, epochs=1, seed=1, log=None, **TINY) == paths
    assert not (tmp_path / "elsewhere").exists()
    monkeypatch.setenv("KERAS_PRUNE_GUARD_CACHE", str(cache))
    assert ensure_benchmark(epochs=1, seed=1, log=None, **TINY) == paths


def test_train_badnet_rejects_other_file_types(tmp_path, bench):
    with pytest.raises(ValueError, match=r"out_path must end in \.h5 or \.keras"):
        train_badnet(bench["info"].parent, tmp_path / "model.txt")


def test_train_badnet_reports_a_missing_benchmark(tmp_path):
    with pytest.raises(ValueError, match="benchmark.json not found"):
        train_badnet(tmp_path, tmp_path / "model.h5", epochs=1)
