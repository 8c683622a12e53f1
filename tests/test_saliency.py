"""Saliency maps of B and B' on the real lab3 BadNet and faces, trigger shares, the figure."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from keras_prune_guard.model.surgery import (
    find_channel_mask,
    insert_channel_mask,
    split_at_mask,
    strip_channel_mask,
)
from keras_prune_guard.report.saliency import (
    METHODS,
    comparison_figure,
    gradcam_layer,
    make_visualizer,
    saliency_maps,
    trigger_share,
)

GLASSES = (15, 35, 0, 47)  # image rows 15..34, every column: where the sunglasses go


def twin_pairs(csaw_dir, real_clean, real_sunglasses, count=None):
    """Rows i of the two files that show the same face: sunglasses true_label == clean label."""
    with h5py.File(csaw_dir / "real_sunglasses_faces.h5", "r") as f:
        true_label = f["true_label"][:]
    (clean, labels), (glasses, _) = real_clean, real_sunglasses
    n = min(len(clean), len(glasses))
    rows = np.flatnonzero(true_label[:n] == labels[:n])
    rows = rows if count is None else rows[:count]
    return clean[rows], glasses[rows], labels[rows]


def channel_ranking(model, clean_images) -> list[int]:
    """pool_3 channels by mean activation over clean faces, ascending, ties by index."""
    head, _ = split_at_mask(insert_channel_mask(model))
    means = keras.ops.convert_to_numpy(head([clean_images])).mean(axis=(0, 1, 2))
    return [int(c) for c in np.argsort(means, kind="stable")]


def pruned_copy(model, channels) -> keras.Model:
    masked = insert_channel_mask(model)
    find_channel_mask(masked).prune(channels)
    return masked


def tiny_cnn(num_classes=3) -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 10, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(5, 3, activation="relu", name="c2")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs, name="tiny")


def test_maps_shape_and_range_on_lab3(lab3_model, real_clean):
    faces = real_clean[0][:4]
    maps = saliency_maps(lab3_model, faces)
    assert maps.shape == (4, 55, 47)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0)
    one = saliency_maps(lab3_model, faces[0])  # a single (H, W, C) image
    np.testing.assert_allclose(one[0], maps[0], atol=1e-5)


def test_pruning_changes_maps_and_no_pruning_does_not(lab3_model, real_clean):
    faces = real_clean[0][:6]
    base = saliency_maps(lab3_model, faces)
    untouched = saliency_maps(insert_channel_mask(lab3_model), faces)
    np.testing.assert_allclose(untouched, base, atol=1e-4)

    pruned = pruned_copy(lab3_model, channel_ranking(lab3_model, real_clean[0])[:50])
    classes = np.argmax(keras.ops.convert_to_numpy(lab3_model(faces)), axis=-1)
    moved = saliency_maps(pruned, faces, class_index=classes)  # same classes as B
    assert np.abs(moved - base).mean() > 0.05
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(moved, base, strict=True)]
    assert np.mean(corr) < 0.85  # measured: 0.78 (the 32 pool_3 channels dead on these faces
    # are among the 50 pruned, so part of each map stays as it was)


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_channel_mask_survives_the_visualiser_clone(lab3_model, real_clean, method):
    channels = channel_ranking(lab3_model, real_clean[0])[:50]
    pruned = pruned_copy(lab3_model, channels)
    vis = make_visualizer(pruned, method)
    assert vis.model is not pruned
    assert find_channel_mask(vis.model).pruned_channels() == sorted(channels)
    assert vis.model.get_layer("output").activation is keras.activations.linear
    assert pruned.get_layer("output").activation is keras.activations.softmax  # not modified

    # The masked channels are really off inside the visualiser: B' gives the same maps as
    # B' with the mask folded into conv_3's weights (no ChannelMask left to lose).
    faces = real_clean[0][:4]
    folded = strip_channel_mask(pruned)
    np.testing.assert_allclose(
        saliency_maps(pruned, faces, method=method),
        saliency_maps(folded, faces, method=method, penultimate_layer="conv_3"),
        atol=1e-3,
    )


def test_trigger_share_known_answers():
    maps = np.zeros((3, 4, 5), "float32")
    maps[0] = 1.0  # uniform: the share is the region's area, 2 rows of 4
    maps[1, 0, 0] = 3.0  # all mass at (0, 0), inside the first two rows
    maps[1, 3, 4] = 1.0
    # maps[2] stays all zero: share 0
    np.testing.assert_allclose(trigger_share(maps, (0, 2, 0, 5)), [0.5, 0.75, 0.0])
    np.testing.assert_allclose(trigger_share(maps, (1, 4, 2, 5)), [9 / 20, 0.25, 0.0])

    mask = np.zeros((4, 5), bool)
    mask[3, 4] = True
    np.testing.assert_allclose(trigger_share(maps, mask), [1 / 20, 0.25, 0.0])
    per_map = np.zeros((3, 4, 5), bool)
    per_map[0] = True
    per_map[1, 0, 0] = True
    np.testing.assert_allclose(trigger_share(maps, per_map), [1.0, 0.75, 0.0])
    np.testing.assert_allclose(trigger_share(maps[0], (0, 1, 0, 5)), [0.25])


@pytest.mark.parametrize(
    "region",
    [(0, 5, 0, 5), (2, 2, 0, 5), (0, 2, 0), (0.0, 2, 0, 5), np.ones((4, 5)), np.ones((3, 5), bool)],
)
def test_trigger_share_rejects_bad_regions(region):
    with pytest.raises(ValueError, match="region"):
        trigger_share(np.ones((2, 4, 5)), region)


def test_trigger_share_rejects_negative_maps():
    with pytest.raises(ValueError, match="non-negative"):
        trigger_share(-np.ones((1, 4, 5)), (0, 1, 0, 1))


def test_comparison_figure_png_and_shares(
    tmp_path, lab3_model, csaw_dir, real_clean, real_sunglasses
):
    clean, glasses, labels = twin_pairs(csaw_dir, real_clean, real_sunglasses, count=6)
    assert len(clean) == 6
    pruned = pruned_copy(lab3_model, channel_ranking(lab3_model, real_clean[0])[:50])
    out = tmp_path / "figs" / "saliency.png"
    info = comparison_figure(
        {"B": lab3_model, "B'": pruned}, clean, glasses, out, trigger_region=GLASSES, max_pairs=2
    )
    assert info["path"] == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000
    with Image.open(out) as image:
        width, height = image.size
    assert 400 <= width <= 700 and 700 <= height <= 1000  # 3 columns, 2 pairs x 2 rows
    assert [p.name for p in out.parent.iterdir()] == ["saliency.png"]  # no temp files left

    assert info["pairs"] == 6 and info["pairs_plotted"] == 2
    assert set(info["shares"]) == {"B", "B'"}
    for shares in info["shares"].values():
        assert set(shares) == {"clean", "triggered"}
        assert all(0.0 <= v <= 1.0 for v in shares.values())
    assert info["predictions"]["B"]["triggered"] == [0] * 6  # the backdoor fires on every face
    assert info["predictions"]["B"]["clean"] == [int(v) for v in labels]
    # shares are over ALL six pairs, not only the two drawn
    expected = trigger_share(saliency_maps(lab3_model, glasses), GLASSES).mean()
    assert info["shares"]["B"]["triggered"] == pytest.approx(expected, abs=1e-6)
    first_two = trigger_share(saliency_maps(lab3_model, glasses[:2]), GLASSES).mean()
    assert info["shares"]["B"]["triggered"] != pytest.approx(first_two, abs=1e-6)

    plain = comparison_figure({"B": lab3_model}, clean[:1], glasses[:1], tmp_path / "one.png")
    assert plain["shares"] is None and (tmp_path / "one.png").stat().st_size > 5_000


def test_comparison_figure_rejects_bad_arguments(tmp_path, lab3_model, real_clean):
    faces = real_clean[0][:2]
    with pytest.raises(ValueError, match=r"\.png"):
        comparison_figure({"B": lab3_model}, faces, faces, tmp_path / "fig.jpg")
    with pytest.raises(ValueError, match="same shape"):
        comparison_figure({"B": lab3_model}, faces, faces[:1], tmp_path / "fig.png")
    with pytest.raises(ValueError, match="region"):
        comparison_figure(
            {"B": lab3_model}, faces, faces, tmp_path / "fig.png", trigger_region=(0, 99, 0, 5)
        )
    assert not (tmp_path / "fig.png").exists()


def test_gradcam_reads_conv_3_before_the_mask(lab3_model, real_clean):
    pruned = pruned_copy(lab3_model, channel_ranking(lab3_model, real_clean[0])[:50])
    assert gradcam_layer(pruned) == "conv_3"
    # Without a mask: conv_4 is bypassed by the fc_1 branch, conv_3 carries every path.
    assert gradcam_layer(lab3_model) == "conv_3"
    assert gradcam_layer(tiny_cnn()) == "c2"
    chain = keras.Sequential(
        [
            keras.Input((12, 10, 3)),
            keras.layers.Conv2D(2, 3, name="only_conv"),
            keras.layers.Flatten(),
        ]
    )
    assert gradcam_layer(chain) == "only_conv"
    assert saliency_maps(chain, np.ones((1, 12, 10, 3)), method="gradcam").shape == (1, 12, 10)

    faces = real_clean[0][:4]
    auto = saliency_maps(pruned, faces, method="gradcam")
    assert auto.shape == (4, 55, 47) and auto.min() >= 0.0 and auto.max() <= 1.0
    np.testing.assert_allclose(
        auto, saliency_maps(pruned, faces, method="gradcam", penultimate_layer="conv_3")
    )
    other = saliency_maps(pruned, faces, method="gradcam", penultimate_layer="conv_2")
    assert np.abs(other - auto).mean() > 0.01


def test_unknown_method_and_bad_arguments_error(lab3_model, real_clean):
    faces = real_clean[0][:2]
    with pytest.raises(ValueError, match="'saliency', 'smoothgrad', 'gradcam'") as err:
        saliency_maps(lab3_model, faces, method="lime")
    assert "lime" in str(err.value) and set(METHODS) == {"saliency", "smoothgrad", "gradcam"}
    with pytest.raises(ValueError, match="Unknown method"):
        comparison_figure({"B": lab3_model}, faces, faces, "unused.png", method="occlusion")
    with pytest.raises(ValueError, match="class_index"):
        saliency_maps(lab3_model, faces, class_index=1283)
    with pytest.raises(ValueError, match="class_index"):
        saliency_maps(lab3_model, faces, class_index=[0, 1, 2])
    with pytest.raises(ValueError, match=r"images must be \(N"):
        saliency_maps(lab3_model, faces[:, :50])
    with pytest.raises(ValueError, match="not a 2-D convolution"):
        saliency_maps(lab3_model, faces, method="gradcam", penultimate_layer="pool_3")
    with pytest.raises(ValueError, match="smooth_samples"):
        saliency_maps(lab3_model, faces, method="smoothgrad", smooth_samples=0)


def test_plain_functional_model_all_methods():
    model = tiny_cnn()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 12, 10, 3)).astype("float32")
    for method in METHODS:
        maps = saliency_maps(model, images, method=method, class_index=1, smooth_samples=3)
        assert maps.shape == (3, 12, 10) and maps.dtype == np.float32
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        assert maps.max() == pytest.approx(1.0)
    by_class = [saliency_maps(model, images[:1], class_index=c)[0] for c in range(3)]
    assert not np.allclose(by_class[0], by_class[1])  # the class index matters
    assert model.get_layer("out").activation is keras.activations.softmax


def test_x10_cut_moves_gradcam_off_the_glasses(lab3_model, csaw_dir, real_clean, real_sunglasses):
    """B attends to the glasses rows on triggered faces; B' with the X=10 cut much less."""
    clean, glasses, _ = twin_pairs(csaw_dir, real_clean, real_sunglasses)
    pruned = pruned_copy(lab3_model, channel_ranking(lab3_model, real_clean[0])[:52])
    share = {
        (name, kind): trigger_share(saliency_maps(m, x, method="gradcam"), GLASSES).mean()
        for name, m in (("B", lab3_model), ("B'", pruned))
        for kind, x in (("clean", clean), ("glasses", glasses))
    }
    assert share["B", "glasses"] > share["B", "clean"] + 0.3
    assert share["B'", "glasses"] < share["B", "glasses"] - 0.25
