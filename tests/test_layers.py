import keras
import numpy as np
import pytest

from keras_prune_guard import ChannelMask


def built_mask(channels=6, **kwargs):
    mask = ChannelMask(**kwargs)
    mask(np.ones((1, 2, 2, channels), "float32"))
    return mask


def test_fresh_mask_is_identity_and_non_trainable():
    mask = built_mask()
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 6)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask(x)), x)
    assert mask.trainable_weights == []
    assert mask.pruned_channels() == []


def test_prune_zeroes_exactly_those_channels():
    mask = built_mask()
    mask.prune([4, 1])
    mask.prune([1, 2])
    out = keras.ops.convert_to_numpy(mask(np.ones((1, 2, 2, 6), "float32")))
    assert mask.pruned_channels() == [1, 2, 4]
    np.testing.assert_array_equal(out[0, 0, 0], [1, 0, 0, 1, 0, 1])
    mask.set_pruned([0])
    assert mask.pruned_channels() == [0]
    mask.restore()
    assert mask.pruned_channels() == []


def test_config_round_trip_keeps_the_mask():
    mask = built_mask(name="m")
    mask.prune([0, 5])
    config = mask.get_config()
    assert config["pruned_channels"] == [0, 5]
    again = ChannelMask.from_config(config)
    again(np.ones((1, 2, 2, 6), "float32"))
    assert again.pruned_channels() == [0, 5]
    assert again.get_config() == config


def test_serialize_by_registered_name():
    data = keras.saving.serialize_keras_object(built_mask(pruned_channels=[3]))
    assert data["registered_name"] == "keras_prune_guard>ChannelMask"
    restored = keras.saving.deserialize_keras_object(data)
    assert isinstance(restored, ChannelMask)


@pytest.mark.parametrize("bad", [[6], [-1], [0, 99]])
def test_out_of_range_channels_are_refused(bad):
    mask = built_mask()
    with pytest.raises(ValueError, match=r"channels 0\.\.5.*Received out-of-range"):
        mask.prune(bad)


def test_unbuilt_mask_says_so():
    with pytest.raises(ValueError, match="not built yet"):
        ChannelMask().prune([0])


def test_mask_survives_saving_inside_a_model(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = ChannelMask(pruned_channels=[1], name="mask")(inputs)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    out = again.predict(np.ones((1, 4, 4, 3), "float32"), verbose=0)
    assert out[..., 1].max() == 0 and out[..., 0].min() == 1
