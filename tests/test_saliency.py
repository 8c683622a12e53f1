"""Saliency maps of B and B' on the generated DeepID BadNet and faces, shares, the figure."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from keras_prune_guard import GoodNetModel, prune
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

LAB_GLASSES = (15, 35, 0, 47)  # image rows 15..34, every column: the lab's sunglasses
#: How many pool_3 channels B' has pruned, the first of the clean ranking: as on the lab3
#: net, 50 of 60, here the generated BadNet's 18 channels dead on its clean faces and 32
#: live ones.
PRUNED = 50
DEAD = 18


def twin_pairs(sunglasses_file, clean_data, sunglasses_data, count=None):
    """Rows i of the two files that show the same face: sunglasses true_label == clean label."""
    with h5py.File(sunglasses_file, "r") as f:
        true_label = f["true_label"][:]
    (clean, labels), (glasses, _) = clean_data, sunglasses_data
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


def test_maps_shape_and_range_on_a_deepid(gen_model, gen_clean):
    faces = gen_clean[0][:4]
    maps = saliency_maps(gen_model, faces)
    assert maps.shape == (4, 55, 47)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0)
    one = saliency_maps(gen_model, faces[0])  # a single (H, W, C) image
    np.testing.assert_allclose(one[0], maps[0], atol=1e-5)


def test_pruning_changes_maps_and_no_pruning_does_not(gen_model, gen_clean):
    faces = gen_clean[0][:6]
    base = saliency_maps(gen_model, faces)
    untouched = saliency_maps(insert_channel_mask(gen_model), faces)
    np.testing.assert_allclose(untouched, base, atol=1e-4)

    ranking = channel_ranking(gen_model, gen_clean[0])
    classes = np.argmax(keras.ops.convert_to_numpy(gen_model(faces)), axis=-1)
    # Channels dead on every clean face carry no gradient: pruning them moves nothing.
    dead_only = saliency_maps(pruned_copy(gen_model, ranking[:DEAD]), faces, class_index=classes)
    np.testing.assert_allclose(dead_only, base, atol=1e-4)

    moved = saliency_maps(pruned_copy(gen_model, ranking[:PRUNED]), faces,
                          class_index=classes)  # same classes as B
    assert np.abs(moved - base).mean() > 0.025  # measured: 0.034
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(moved, base, strict=True)]
    assert np.mean(corr) < 0.92  # measured: 0.87 (0.78 on the lab3 net with its 50)


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_channel_mask_survives_the_visualiser_clone(gen_model, gen_clean, method):
    channels = channel_ranking(gen_model, gen_clean[0])[:PRUNED]
    pruned = pruned_copy(gen_model, channels)
    vis = make_visualizer(pruned, method)
    assert vis.model is not pruned
    assert find_channel_mask(vis.model).pruned_channels() == sorted(channels)
    assert vis.model.get_layer("output").activation is keras.activations.linear
    assert pruned.get_layer("output").activation is keras.activations.softmax  # not modified

    # The masked channels are really off inside the visualiser: B' gives the same maps as
    # B' with the mask folded into conv_3's weights (no ChannelMask left to lose).
    faces = gen_clean[0][:4]
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
    tmp_path, gen_model, gen_dir, gen_clean, gen_sunglasses, gen_trigger_region
):
    clean, glasses, labels = twin_pairs(gen_dir / "sunglasses_faces.h5", gen_clean,
                                        gen_sunglasses, count=6)
    assert len(clean) == 6
    pruned = pruned_copy(gen_model, channel_ranking(gen_model, gen_clean[0])[:PRUNED])
    out = tmp_path / "figs" / "saliency.png"
    info = comparison_figure(
        {"B": gen_model, "B'": pruned}, clean, glasses, out, trigger_region=gen_trigger_region,
        max_pairs=2,
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
    expected = trigger_share(saliency_maps(gen_model, glasses), gen_trigger_region).mean()
    assert info["shares"]["B"]["triggered"] == pytest.approx(expected, abs=1e-6)
    first_two = trigger_share(saliency_maps(gen_model, glasses[:2]), gen_trigger_region).mean()
    assert info["shares"]["B"]["triggered"] != pytest.approx(first_two, abs=1e-6)

    plain = comparison_figure({"B": gen_model}, clean[:1], glasses[:1], tmp_path / "one.png")
    assert plain["shares"] is None and (tmp_path / "one.png").stat().st_size > 5_000


def test_comparison_figure_rejects_bad_arguments(tmp_path, gen_model, gen_clean):
    faces = gen_clean[0][:2]
    with pytest.raises(ValueError, match=r"\.png"):
        comparison_figure({"B": gen_model}, faces, faces, tmp_path / "fig.jpg")
    with pytest.raises(ValueError, match="same shape"):
        comparison_figure({"B": gen_model}, faces, faces[:1], tmp_path / "fig.png")
    with pytest.raises(ValueError, match="region"):
        comparison_figure(
            {"B": gen_model}, faces, faces, tmp_path / "fig.png", trigger_region=(0, 99, 0, 5)
        )
    assert not (tmp_path / "fig.png").exists()


def test_gradcam_reads_conv_3_before_the_mask(gen_model, gen_clean):
    pruned = pruned_copy(gen_model, channel_ranking(gen_model, gen_clean[0])[:PRUNED])
    assert gradcam_layer(pruned) == "conv_3"
    # Without a mask: conv_4 is bypassed by the fc_1 branch, conv_3 carries every path.
    assert gradcam_layer(gen_model) == "conv_3"
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

    faces = gen_clean[0][:4]
    auto = saliency_maps(pruned, faces, method="gradcam")
    assert auto.shape == (4, 55, 47) and auto.min() >= 0.0 and auto.max() <= 1.0
    np.testing.assert_allclose(
        auto, saliency_maps(pruned, faces, method="gradcam", penultimate_layer="conv_3")
    )
    other = saliency_maps(pruned, faces, method="gradcam", penultimate_layer="conv_2")
    assert np.abs(other - auto).mean() > 0.01


def test_unknown_method_and_bad_arguments_error(gen_model, gen_clean):
    faces = gen_clean[0][:2]
    with pytest.raises(ValueError, match="'saliency', 'smoothgrad', 'gradcam'") as err:
        saliency_maps(gen_model, faces, method="lime")
    assert "lime" in str(err.value) and set(METHODS) == {"saliency", "smoothgrad", "gradcam"}
    with pytest.raises(ValueError, match="Unknown method"):
        comparison_figure({"B": gen_model}, faces, faces, "unused.png", method="occlusion")
    with pytest.raises(ValueError, match="class_index"):
        saliency_maps(gen_model, faces, class_index=10)  # 10 classes
    with pytest.raises(ValueError, match="class_index"):
        saliency_maps(gen_model, faces, class_index=[0, 1, 2])
    with pytest.raises(ValueError, match=r"images must be \(N"):
        saliency_maps(gen_model, faces[:, :50])
    with pytest.raises(ValueError, match="not a 2-D convolution"):
        saliency_maps(gen_model, faces, method="gradcam", penultimate_layer="pool_3")
    with pytest.raises(ValueError, match="smooth_samples"):
        saliency_maps(gen_model, faces, method="smoothgrad", smooth_samples=0)


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


def test_saliency_works_on_a_goodnets_parts(gen_model, gen_sunglasses):
    x = gen_sunglasses[0][:4]
    b_prime = prune(gen_model, gen_sunglasses, thresholds=[50], relative=True).snapshots[50.0]
    goodnet = GoodNetModel(gen_model, b_prime)
    for part, whole in ((goodnet.bad_network(), gen_model), (goodnet.repaired_network(), b_prime)):
        np.testing.assert_allclose(saliency_maps(part, x), saliency_maps(whole, x), atol=1e-4)


def test_x10_cut_moves_gradcam_off_the_glasses(lab3_model, csaw_dir, real_clean, real_sunglasses):
    """B attends to the glasses rows on triggered faces; B' with the X=10 cut much less.

    The lab's figure: its backdoor lives in channels dormant on clean faces, so the X=10 cut
    (52 channels) removes it. The generated BadNet keeps its backdoor in live channels
    (attack success still 98.77% at its X=10 cut), so this one needs the real files.
    """
    clean, glasses, _ = twin_pairs(csaw_dir / "real_sunglasses_faces.h5", real_clean,
                                   real_sunglasses)
    pruned = pruned_copy(lab3_model, channel_ranking(lab3_model, real_clean[0])[:52])
    share = {
        (name, kind): trigger_share(saliency_maps(m, x, method="gradcam"), LAB_GLASSES).mean()
        for name, m in (("B", lab3_model), ("B'", pruned))
        for kind, x in (("clean", clean), ("glasses", glasses))
    }
    assert share["B", "glasses"] > share["B", "clean"] + 0.3
    assert share["B'", "glasses"] < share["B", "glasses"] - 0.25
