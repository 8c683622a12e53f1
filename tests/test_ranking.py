import numpy as np
import pytest
import tensorflow as tf

from keras_prune_guard import insert_channel_mask
from keras_prune_guard.model.surgery import split_at_mask
from keras_prune_guard.pruning.ranking import (
    activation_means,
    channel_ranking,
    collect_activations,
    rank_channels,
)


def _conv_relu(x, kernel, bias):
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[:2], axis=(1, 2))
    return np.maximum(np.einsum("nhwcij,ijcf->nhwf", windows, kernel) + bias, 0)


def _pool(x):
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def numpy_pool3(model, x):
    """DeepID up to pool_3 in plain numpy, float64: independent of Keras."""
    for name in ("conv_1", "conv_2", "conv_3"):
        kernel, bias = (w.astype("float64") for w in model.get_layer(name).get_weights())
        x = _pool(_conv_relu(x, kernel, bias))
    return x


def test_ranking_on_faces_matches_numpy(gen_model, gen_clean):
    x, _ = gen_clean
    head, _ = split_at_mask(insert_channel_mask(gen_model))
    order, means = channel_ranking(head, x, batch_size=32)
    expected_means = numpy_pool3(gen_model, x.astype("float64")).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(means, expected_means, rtol=1e-4, atol=1e-4)
    # Ascending, ties (dead channels, mean exactly 0) by channel index.
    expected_order = np.lexsort((np.arange(60), np.round(expected_means, 3)))
    assert order.tolist() == expected_order.tolist()
    dead = np.flatnonzero(means == 0)
    assert len(dead) > 10
    assert order[: len(dead)].tolist() == sorted(dead.tolist())


def test_descending_is_the_reverse_order_up_to_ties():
    means = np.array([3.0, 0.0, 5.0, 0.0, 1.0])
    assert rank_channels(means).tolist() == [1, 3, 4, 0, 2]
    assert rank_channels(means, "descending").tolist() == [2, 0, 4, 1, 3]


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="order must be one of.*Received: order='random'"):
        rank_channels(np.zeros(3), "random")


def test_streamed_batches_give_the_same_means(gen_model, gen_clean):
    x, y = gen_clean
    head, _ = split_at_mask(insert_channel_mask(gen_model))
    _, in_memory = channel_ranking(head, x)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    _, streamed = channel_ranking(head, dataset)
    np.testing.assert_allclose(streamed, in_memory, rtol=1e-6)


def test_activation_means_of_batches():
    a = np.arange(24, dtype="float32").reshape(2, 3, 4)
    np.testing.assert_allclose(activation_means([a[:1], a[1:]]), a.reshape(-1, 4).mean(0))
    with pytest.raises(ValueError, match="empty"):
        activation_means([])


def test_near_ties_break_by_channel_index_whatever_the_last_bits():
    """Sums reordered across devices change a mean in its last bits, never the order."""
    base = np.array([2.0, 1.0, 3.0, 1.0, 0.0])
    for noise in ([0, 1e-12, 0, -1e-12, 0], [0, -1e-12, 0, 1e-12, 0], [0, 0, 0, 0, 1e-15]):
        means = base + np.array(noise)
        assert rank_channels(means).tolist() == [4, 1, 3, 0, 2]
        assert rank_channels(means, "descending").tolist() == [2, 0, 1, 3, 4]
    # Means further apart than the tolerance keep their order.
    assert rank_channels(np.array([1.0 + 1e-3, 1.0])).tolist() == [1, 0]
    assert rank_channels(np.array([1.0 + 1e-12, 1.0]), tie_tolerance=0).tolist() == [1, 0]
    with pytest.raises(ValueError, match="tie_tolerance must be >= 0"):
        rank_channels(base, tie_tolerance=-1)


def test_activation_means_sum_in_float64_batch_by_batch():
    # 1e8 + many ones: a float32 accumulator would lose the ones.
    acts = np.ones((4001, 1, 1, 2), dtype="float32")
    acts[0, ..., 0] = 1e8
    expected = (1e8 + 4000) / 4001
    assert activation_means(acts)[0] == pytest.approx(expected, rel=1e-12)
    assert activation_means([acts[:7], acts[7:]])[1] == 1.0


def test_collect_activations_of_a_streamed_file(gen_model, gen_dir, gen_clean):
    from keras_prune_guard.data.files import lab_h5_dataset

    head, _ = split_at_mask(insert_channel_mask(gen_model))
    acts, labels = collect_activations(head, lab_h5_dataset(gen_dir / "clean_faces.h5", 25))
    reference, ref_labels = collect_activations(head, gen_clean, batch_size=25)
    assert acts.shape == (90, 5, 4, 60) and acts.dtype == np.float32
    np.testing.assert_array_equal(acts, reference)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(labels, gen_clean[1])
    order, means = channel_ranking(head, lab_h5_dataset(gen_dir / "clean_faces.h5", 25))
    assert order.tolist() == rank_channels(activation_means(reference)).tolist()
