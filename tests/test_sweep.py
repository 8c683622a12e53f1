import numpy as np
import pytest

from keras_prune_guard import insert_channel_mask
from keras_prune_guard.model.surgery import find_channel_mask
from keras_prune_guard.pruning.sweep import check_thresholds, sweep


@pytest.fixture()
def masked(gen_model):
    return insert_channel_mask(gen_model)


@pytest.mark.slow
def test_every_step_matches_the_naive_sweep(masked, gen_clean, gen_sunglasses):
    x, y = gen_clean
    result = sweep(masked, (x, y), poisoned=gen_sunglasses, full_curve=True,
                   record_predictions=True, batch_size=50)
    assert result.predictions.shape == (61, len(x))
    # Most image-steps need no work: a channel zero on an image cannot change it.
    assert 0 < result.stats["image_steps"] < 60 * len(x)
    mask = find_channel_mask(masked)
    for step in range(61):
        mask.set_pruned(result.channel_order[:step])
        naive = masked.predict(x, verbose=0, batch_size=128).argmax(-1)
        np.testing.assert_array_equal(result.predictions[step], naive, err_msg=f"step {step}")
        accuracy = np.mean(naive == y) * 100
        assert result.curve[step].valid_accuracy == pytest.approx(accuracy)
    # The sweep itself never changes the model's mask.
    mask.restore()
    assert result.curve[0].attack_success > 90
    assert result.curve[-1].num_pruned == 60


def test_snapshots_follow_the_first_below_rule(masked, gen_clean):
    result = sweep(masked, gen_clean, thresholds=[10, 2, 4])
    base = result.baseline_valid_accuracy
    assert list(result.snapshots) == [2.0, 4.0, 10.0]
    for t, snap in result.snapshots.items():
        k = snap.num_pruned
        assert snap.reached
        assert result.curve[k].valid_accuracy <= base - t
        assert all(p.valid_accuracy > base - t for p in result.curve[:k])
        assert snap.pruned_channels == result.channel_order[:k]
    # It stops at the largest threshold unless asked for the whole curve.
    assert len(result.curve) == result.snapshots[10.0].num_pruned + 1


def test_lab3_snapshots_are_the_labs_figures(lab3_model, real_clean):
    result = sweep(insert_channel_mask(lab3_model), real_clean, thresholds=[10, 2, 4])
    assert result.baseline_valid_accuracy == pytest.approx(119 / 120 * 100)
    assert [s.num_pruned for s in result.snapshots.values()] == [43, 45, 48]


def test_last_within_keeps_the_step_before(masked, gen_clean):
    first = sweep(masked, gen_clean, thresholds=[4])
    last = sweep(masked, gen_clean, thresholds=[4], keep="last_within")
    assert last.snapshots[4.0].num_pruned == first.snapshots[4.0].num_pruned - 1
    assert last.snapshots[4.0].valid_accuracy > first.baseline_valid_accuracy - 4


def test_relative_thresholds(masked, gen_clean):
    result = sweep(masked, gen_clean, thresholds=[50], relative=True)
    snap = result.snapshots[50.0]
    assert snap.valid_accuracy <= result.baseline_valid_accuracy * 0.5
    assert result.curve[snap.num_pruned - 1].valid_accuracy > result.baseline_valid_accuracy / 2


def test_descending_order_prunes_the_busiest_channel_first(masked, gen_clean):
    result = sweep(masked, gen_clean, order="descending", thresholds=[2])
    assert result.channel_order[0] == int(np.argmax(result.channel_means))
    assert result.snapshots[2.0].num_pruned < 10


def test_unreachable_threshold_is_a_warning(masked, gen_clean):
    result = sweep(masked, gen_clean, thresholds=[99.5])
    snap = result.snapshots[99.5]
    assert not snap.reached and snap.num_pruned == 60
    assert any("never fell 99.5" in w for w in result.warnings)
    assert any("below 0%" in w for w in result.warnings)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["two"], "must be numbers"),
        ([0], "> 0 and < 100"),
        ([100], "> 0 and < 100"),
        ([-2], "> 0 and < 100"),
        ([float("nan")], "> 0 and < 100"),
        ([2, 2.0], "must not repeat"),
        ([], "at least one"),
    ],
)
def test_bad_thresholds(bad, message):
    with pytest.raises(ValueError, match=message):
        check_thresholds(bad)


def test_model_without_mask_is_refused(gen_model, gen_clean):
    with pytest.raises(ValueError, match="exactly one ChannelMask"):
        sweep(gen_model, gen_clean)


def test_several_small_steps_share_one_call(masked, gen_clean):
    """Steps touching few images are batched together; the curve is unchanged."""
    x, y = gen_clean
    small = sweep(masked, (x, y), full_curve=True, record_predictions=True, batch_size=500)
    one = sweep(masked, (x, y), full_curve=True, record_predictions=True, batch_size=1)
    np.testing.assert_array_equal(small.predictions, one.predictions)
    assert small.stats["image_steps"] == one.stats["image_steps"]
    # Only images on which a pruned channel is non-zero are re-run: fewer than 60 x 90 (far
    # fewer on the lab's sparser network).
    assert 0 < small.stats["image_steps"] < 60 * len(x)


def test_progress_is_called_once_per_step(masked, gen_clean):
    seen = []
    result = sweep(masked, gen_clean, thresholds=[4], progress=lambda *a: seen.append(a))
    assert [s[0] for s in seen] == list(range(1, len(result.curve)))
    assert all(total == 60 for _, total, _ in seen)
    assert seen[-1][2] == result.curve[-1].valid_accuracy


def test_dataset_input_gives_the_same_curve(masked, gen_clean):
    import tensorflow as tf

    x, y = gen_clean
    arrays = sweep(masked, (x, y), thresholds=[4])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    streamed = sweep(masked, dataset, thresholds=[4])
    assert [p.valid_accuracy for p in streamed.curve] == [
        p.valid_accuracy for p in arrays.curve
    ]
    assert streamed.channel_order == arrays.channel_order


def test_file_cache_for_arrays_gives_the_same_sweep(masked, gen_clean, tmp_path):
    x, y = gen_clean
    in_ram = sweep(masked, (x, y), full_curve=True, record_predictions=True, batch_size=40)
    on_disk = sweep(masked, (x, y), full_curve=True, record_predictions=True, batch_size=40,
                    cache_dir=tmp_path)
    np.testing.assert_array_equal(on_disk.predictions, in_ram.predictions)
    assert on_disk.channel_means == in_ram.channel_means
    assert on_disk.channel_order == in_ram.channel_order
    assert on_disk.stats["image_steps"] == in_ram.stats["image_steps"]
    assert (in_ram.stats["activation_cache"], on_disk.stats["activation_cache"]) == (
        "memory", "file")
    assert in_ram.stats["activation_bytes_per_image"] == 4800
    assert list(tmp_path.iterdir()) == []


def test_images_and_labels_of_different_lengths_are_refused(masked, gen_clean):
    x, y = gen_clean
    with pytest.raises(ValueError, match="90 images, 89 labels"):
        sweep(masked, (x, y[:-1]))
