"""The whole-model sweep (pruning/sweep_whole.py): the same SweepResult as the fast path."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from support.zoo import ZOO, zoo_data

from keras_prune_guard import insert_channel_mask, sweep
from keras_prune_guard.model.surgery import find_channel_mask
from keras_prune_guard.pruning.sweep_whole import sweep_whole


@pytest.fixture(scope="module")
def functional():
    keras.utils.set_random_seed(0)
    model = ZOO["batchnorm_logits"].build()
    x, y = zoo_data(model, count=20)
    return insert_channel_mask(model), x, y


@pytest.mark.parametrize("keep", ["first_below", "last_within"])
def test_same_result_as_the_fast_sweep(functional, keep):
    masked, x, y = functional
    poisoned = (x[:8], np.zeros(8, "int64"))
    kwargs = {"thresholds": [10, 40, 99.5], "keep": keep, "poisoned": poisoned,
              "record_predictions": True, "batch_size": 7}
    fast, whole = sweep(masked, (x, y), **kwargs), sweep_whole(masked, (x, y), **kwargs)
    assert whole.curve == fast.curve and whole.channel_order == fast.channel_order
    assert whole.snapshots == fast.snapshots and whole.warnings == fast.warnings
    np.testing.assert_array_equal(whole.predictions, fast.predictions)
    np.testing.assert_allclose(whole.channel_means, fast.channel_means, rtol=1e-6)
    assert whole.baseline_valid_accuracy == fast.baseline_valid_accuracy
    assert whole.layer == fast.layer
    assert whole.stats["path"] == "whole model" and whole.stats["images"] == 20
    assert find_channel_mask(masked).pruned_channels() == []  # left as it was


def test_a_dataset_and_a_generator_give_the_same_curve(functional):
    masked, x, y = functional
    arrays = sweep_whole(masked, (x, y), thresholds=[40])
    dataset = sweep_whole(masked, tf.data.Dataset.from_tensor_slices((x, y)).batch(6),
                          thresholds=[40])
    generator = sweep_whole(masked, ((x[i:i + 5], y[i:i + 5]) for i in range(0, 20, 5)),
                            thresholds=[40])
    assert dataset.curve == arrays.curve == generator.curve


def test_the_mask_is_restored_and_strategies_refused(functional):
    masked, x, y = functional
    mask = find_channel_mask(masked)
    mask.set_pruned([2, 5])
    try:
        result = sweep_whole(masked, (x, y), thresholds=[40])
        assert result.curve[0].num_pruned == 0 and result.baseline_valid_accuracy == 100.0
        assert mask.pruned_channels() == [2, 5]
    finally:
        mask.restore()
    with pytest.raises(ValueError, match="strategy must be None"):
        sweep_whole(masked, (x, y), strategy=tf.distribute.get_strategy())
    with pytest.raises(ValueError, match="no labels"):
        sweep_whole(masked, x)
