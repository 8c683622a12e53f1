import keras
import numpy as np
import pytest

from keras_prune_guard import (
    ChannelMask,
    deepid,
    find_channel_mask,
    insert_channel_mask,
    last_pooling_layer,
    split_at_mask,
    strip_channel_mask,
)
from keras_prune_guard.surgery import pruned_copy


def test_last_pooling_layer_of_deepid():
    assert last_pooling_layer(deepid(num_classes=5)) == "pool_3"


def test_all_ones_mask_gives_identical_outputs_on_lab3(lab3_model, real_clean):
    x, _ = real_clean
    masked = insert_channel_mask(lab3_model)
    assert [layer.name for layer in masked.layers].index("pool_3_mask") == 7
    np.testing.assert_array_equal(
        masked.predict(x, verbose=0), lab3_model.predict(x, verbose=0)
    )


def test_masking_a_channel_equals_zeroing_conv3(lab3_model, real_clean, real_sunglasses):
    x = np.concatenate([real_clean[0], real_sunglasses[0]])
    channels = [7, 30, 59]
    masked = insert_channel_mask(lab3_model, after="pool_3", pruned_channels=channels)
    kernel, bias = lab3_model.get_layer("conv_3").get_weights()
    kernel[..., channels] = 0
    bias[channels] = 0
    lab3_model.get_layer("conv_3").set_weights([kernel, bias])
    np.testing.assert_allclose(
        masked.predict(x, verbose=0), lab3_model.predict(x, verbose=0), rtol=0, atol=1e-6
    )


def test_insert_copies_weights_and_leaves_b_alone(lab3_model):
    before = [w.copy() for w in lab3_model.get_weights()]
    masked = insert_channel_mask(lab3_model)
    find_channel_mask(masked).prune([0, 1])
    masked.get_layer("fc_1").kernel.assign(np.zeros((1200, 160), "float32"))
    for a, b in zip(before, lab3_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unknown_layer_lists_candidates():
    with pytest.raises(ValueError, match=r"no layer named 'pool_9'.*'pool_3'"):
        insert_channel_mask(deepid(num_classes=5), after="pool_9")


def test_layer_without_channel_axis_is_refused():
    with pytest.raises(ValueError, match=r"'fc_1'.*no channel axis.*\(None, 160\)"):
        insert_channel_mask(deepid(num_classes=5), after="fc_1")


def test_subclassed_model_gets_a_clear_error():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(TypeError, match="subclassed model of type Tiny"):
        insert_channel_mask(Tiny())


def test_second_mask_is_refused():
    masked = insert_channel_mask(deepid(num_classes=5))
    with pytest.raises(ValueError, match="already has a ChannelMask"):
        insert_channel_mask(masked)


def test_sequential_models_work():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    masked = insert_channel_mask(model)
    x = np.random.default_rng(1).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(masked.predict(x, verbose=0), model.predict(x, verbose=0))
    assert find_channel_mask(masked).name == "pool_mask"


def test_split_at_mask_recomposes(lab3_model, real_clean):
    x, _ = real_clean
    masked = insert_channel_mask(lab3_model, pruned_channels=[2, 3])
    head, tail = split_at_mask(masked)
    assert head.output_shape == (None, 5, 4, 60)
    assert not any(isinstance(layer, ChannelMask) for layer in tail.layers)
    mask = find_channel_mask(masked).mask_values()
    np.testing.assert_allclose(
        tail.predict(head.predict(x, verbose=0) * mask, verbose=0),
        masked.predict(x, verbose=0),
        atol=1e-6,
    )


def test_strip_folds_the_mask_into_a_plain_model(lab3_model, real_clean, tmp_path):
    x, _ = real_clean
    masked = insert_channel_mask(lab3_model, pruned_channels=list(range(0, 60, 3)))
    plain = strip_channel_mask(masked)
    assert not any(isinstance(layer, ChannelMask) for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-6)
    # Plain Keras reloads it without this package's custom objects.
    plain.save(tmp_path / "plain.h5")
    reloaded = keras.saving.load_model(tmp_path / "plain.h5", custom_objects={})
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), masked.predict(x, verbose=0),
                               atol=1e-6)


def test_strip_refuses_what_it_cannot_fold():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="tanh", name="conv")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match="Cannot fold ChannelMask 'pool_mask'"):
        strip_channel_mask(insert_channel_mask(model, pruned_channels=[0]))


def test_pruned_copy_is_independent(lab3_model):
    masked = insert_channel_mask(lab3_model)
    copy = pruned_copy(masked, [1, 2, 3])
    assert find_channel_mask(copy).pruned_channels() == [1, 2, 3]
    assert find_channel_mask(masked).pruned_channels() == []
    copy.get_layer("output").bias.assign(np.ones(1283, "float32"))
    assert not np.any(masked.get_layer("output").get_weights()[1] == 1)
