import keras
import numpy as np
import pytest

from keras_prune_guard import ChannelMask, deepid, insert_channel_mask, last_pooling_layer
from keras_prune_guard.model.surgery import (
    find_channel_mask,
    pruned_copy,
    split_at_mask,
    strip_channel_mask,
)


def test_last_pooling_layer_of_deepid():
    assert last_pooling_layer(deepid(num_classes=5)) == "pool_3"


def test_all_ones_mask_gives_identical_outputs_on_deepid(gen_model, gen_clean):
    x, _ = gen_clean
    masked = insert_channel_mask(gen_model)
    assert [layer.name for layer in masked.layers].index("pool_3_mask") == 7
    np.testing.assert_array_equal(
        masked.predict(x, verbose=0), gen_model.predict(x, verbose=0)
    )


def test_masking_a_channel_equals_zeroing_conv3(gen_model, gen_clean, gen_sunglasses):
    x = np.concatenate([gen_clean[0], gen_sunglasses[0]])
    channels = [7, 30, 59]
    masked = insert_channel_mask(gen_model, after="pool_3", pruned_channels=channels)
    kernel, bias = gen_model.get_layer("conv_3").get_weights()
    kernel[..., channels] = 0
    bias[channels] = 0
    gen_model.get_layer("conv_3").set_weights([kernel, bias])
    np.testing.assert_allclose(
        masked.predict(x, verbose=0), gen_model.predict(x, verbose=0), rtol=0, atol=1e-6
    )


def test_insert_copies_weights_and_leaves_b_alone(gen_model):
    before = [w.copy() for w in gen_model.get_weights()]
    masked = insert_channel_mask(gen_model)
    find_channel_mask(masked).prune([0, 1])
    masked.get_layer("fc_1").kernel.assign(np.zeros((1200, 160), "float32"))
    for a, b in zip(before, gen_model.get_weights()):
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


def test_split_at_mask_recomposes(gen_model, gen_clean):
    x, _ = gen_clean
    masked = insert_channel_mask(gen_model, pruned_channels=[2, 3])
    head, tail = split_at_mask(masked)
    assert head.output_shape == (None, 5, 4, 60)
    assert not any(isinstance(layer, ChannelMask) for layer in tail.layers)
    mask = find_channel_mask(masked).mask_values()
    np.testing.assert_allclose(
        tail.predict(head.predict(x, verbose=0) * mask, verbose=0),
        masked.predict(x, verbose=0),
        atol=1e-6,
    )


def test_strip_folds_the_mask_into_a_plain_model(gen_model, gen_clean, tmp_path):
    x, _ = gen_clean
    masked = insert_channel_mask(gen_model, pruned_channels=list(range(0, 60, 3)))
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


def test_pruned_copy_is_independent(gen_model):
    masked = insert_channel_mask(gen_model)
    copy = pruned_copy(masked, [1, 2, 3])
    assert find_channel_mask(copy).pruned_channels() == [1, 2, 3]
    assert find_channel_mask(masked).pruned_channels() == []
    copy.get_layer("output").bias.assign(np.ones(10, "float32"))
    assert not np.any(masked.get_layer("output").get_weights()[1] == 1)


# --- any Keras classifier (issue 13): where the mask goes, and folding into consumers ----


def _small(body, shape=(10, 10, 3), name="small"):
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape, name="images")
    return keras.Model(inputs, body(inputs), name=name)


def _images(n=6, shape=(10, 10, 3)):
    return np.random.default_rng(3).uniform(-1, 2, (n, *shape)).astype("float32")


def _fold_matches(model, after, pruned):
    masked = insert_channel_mask(model, after=after, pruned_channels=pruned)
    plain = strip_channel_mask(masked)
    x = _images(shape=model.input_shape[1:])
    np.testing.assert_allclose(plain.predict(x, verbose=0), masked.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert not any(isinstance(layer, ChannelMask) for layer in plain.layers)
    return plain


def test_default_rule_walks_back_through_the_head():
    def body(x):
        x = keras.layers.MaxPooling2D(name="early_pool")(keras.layers.Conv2D(4, 3)(x))
        x = keras.layers.Conv2D(6, 3, name="late_conv")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dropout(0.1)(keras.layers.Dense(8, activation="relu")(x))
        return keras.layers.Softmax()(keras.layers.Dense(3)(x))

    assert last_pooling_layer(_small(body)) == "gap"


def test_residual_add_on_feature_maps_is_not_part_of_the_head():
    def body(x):
        pooled = keras.layers.MaxPooling2D(name="pool")(keras.layers.Conv2D(4, 3)(x))
        y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(pooled)
        x = keras.layers.Add(name="add")([pooled, y])
        return keras.layers.Dense(2)(keras.layers.Flatten()(x))

    with pytest.raises(ValueError, match=r"stopped at \['add \(Add\)'\].*candidates: "
                       r"\['add', 'pool'\]"):
        last_pooling_layer(_small(body))


def test_fold_into_the_dense_after_a_global_pool_with_batchnorm_before():
    def body(x):
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(5, 3)(x))
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        return keras.layers.Dense(3, name="out")(x)

    model = _small(body)
    plain = _fold_matches(model, None, [0, 3])
    kernel = plain.get_layer("out").get_weights()[0]
    assert not kernel[[0, 3]].any() and kernel[[1, 2, 4]].all()


def test_fold_into_a_following_conv_and_batchnorm():
    def body(x):
        x = keras.layers.BatchNormalization(name="bn_in")(keras.layers.Conv2D(4, 3)(x))
        x = keras.layers.MaxPooling2D(name="pool")(x)
        a = keras.layers.Conv2D(3, 1, name="conv_next")(x)
        b = keras.layers.BatchNormalization(name="bn_next")(x)
        x = keras.layers.Concatenate()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
        return keras.layers.Dense(2)(x)

    model = _small(body)
    model.get_layer("bn_next").set_weights(
        [np.full(4, 1.5, "float32"), np.full(4, 0.2, "float32"), np.full(4, 0.3, "float32"),
         np.full(4, 2.0, "float32")])
    plain = _fold_matches(model, "pool", [1, 2])
    assert not plain.get_layer("conv_next").get_weights()[0][:, :, [1, 2], :].any()
    gamma = plain.get_layer("bn_next").get_weights()[0]
    assert not gamma[[1, 2]].any() and gamma[[0, 3]].all()


def test_fold_through_flatten_and_concatenate_offsets():
    def body(x):
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(3, 3)(x))
        x = keras.layers.MaxPooling2D(2, name="pool")(x)  # (4, 4, 3)
        other = keras.layers.Conv2D(2, 1, name="other")(x)
        both = keras.layers.Concatenate(name="concat")([other, x])  # x's channels at 2..4
        return keras.layers.Dense(2, name="out")(keras.layers.Flatten()(both))

    model = _small(body)
    plain = _fold_matches(model, "pool", [0])
    kernel = plain.get_layer("out").get_weights()[0]  # rows: 16 positions x 5 channels
    rows = np.arange(16) * 5 + 2
    assert not kernel[rows].any() and kernel[rows + 1].all()


def test_fold_refuses_a_residual_add_after_the_mask():
    def body(x):
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(x))
        pooled = keras.layers.MaxPooling2D(name="pool")(x)
        y = keras.layers.Conv2D(4, 1)(pooled)
        x = keras.layers.Add(name="add")([pooled, y])
        return keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))

    masked = insert_channel_mask(_small(body), after="pool", pruned_channels=[1])
    with pytest.raises(ValueError, match=r"Cannot fold ChannelMask 'pool_mask'.*'add': a Add"):
        strip_channel_mask(masked)


def test_fold_into_the_producer_only_when_nothing_else_reads_it():
    def body(x):
        conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
        pooled = keras.layers.MaxPooling2D(name="pool")(conv)
        side = keras.layers.GlobalMaxPooling2D(name="side")(conv)  # also reads conv
        x = keras.layers.Concatenate()([keras.layers.Flatten()(pooled), side])
        return keras.layers.Dense(2, name="out")(x)

    plain = _fold_matches(_small(body), "pool", [2])
    assert plain.get_layer("conv").get_weights()[0][..., 2].any()  # conv untouched


def test_global_pool_outputs_can_be_masked_but_dense_outputs_cannot():
    def body(x):
        x = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Conv2D(4, 3)(x))
        return keras.layers.Dense(2, name="out")(keras.layers.Dense(5, name="fc")(x))

    model = _small(body)
    assert find_channel_mask(insert_channel_mask(model, after="gap")).channels == 4
    with pytest.raises(ValueError, match=r"'fc'.*no channel axis.*\(None, 5\)"):
        insert_channel_mask(model, after="fc")


def test_nested_paths_and_bare_inner_names():
    def block(name, inner):
        inputs = keras.Input((8, 8, 4))
        return keras.Model(inputs, keras.layers.ReLU(name=inner)(inputs), name=name)

    outer = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Conv2D(4, 3),
                              block("a", "relu_x"), block("b", "relu_y"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    assert find_channel_mask(insert_channel_mask(outer, after="b/relu_y")).name == "relu_y_mask"
    assert find_channel_mask(insert_channel_mask(outer, after="relu_x")).name == "relu_x_mask"
    with pytest.raises(ValueError, match=r"no layer named 'b/nothing'.*'<model>/<layer>'"):
        insert_channel_mask(outer, after="b/nothing")


def test_repeated_names_across_nested_models_keep_them_whole():
    def block(name):
        inputs = keras.Input((8, 8, 4))
        return keras.Model(inputs, keras.layers.ReLU(name="relu")(inputs), name=name)

    outer = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Conv2D(4, 3), block("a"),
                              block("b"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    assert last_pooling_layer(outer).startswith("global_average_pooling2d")
    assert find_channel_mask(insert_channel_mask(outer, after="b")).name == "b_mask"
    with pytest.raises(ValueError, match=r"no layer named 'a/relu'.*names repeat"):
        insert_channel_mask(outer, after="a/relu")
