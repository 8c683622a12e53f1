"""Loading networks: the lab's weights, full models, input scaling, and refusing Lambda code."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from keras_prune_guard.model.loading import (
    deepid,
    image_shape_of,
    lambda_layers,
    load_network,
    num_classes_of,
)
from keras_prune_guard.model.surgery import find_channel_mask, insert_channel_mask

HACKML = "hackml2020_sunglasses_bd_weights.h5"
# The order of the lab's files (Keras 2 wrote conv_4 before fc_1), unlike deepid().layers.
LAB_ORDER = ["input", "conv_1", "pool_1", "conv_2", "pool_2", "conv_3", "pool_3", "conv_4",
             "flatten_1", "flatten_2", "fc_1", "fc_2", "add_1", "activation_1", "output"]


def raw_images(n=4, shape=(55, 47, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *shape)).astype("float32")


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_same_weights(a: keras.Model, b: keras.Model):
    for layer in a.layers:
        for w, v in zip(layer.get_weights(), b.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(w, v)


def write_keras2_weights(model: keras.Model, path: Path, order=LAB_ORDER) -> Path:
    """Writes weights in the layout of the lab's Keras 2.3.1 `bd_weights.h5` files."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in order])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.3.1"
        for name in order:
            group = f.create_group(name)
            values = model.get_layer(name).get_weights()
            weight_names = [f"{name}/{k}:0" for k in ("kernel", "bias")][: len(values)]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
            for weight_name, value in zip(weight_names, values, strict=True):
                group.create_dataset(weight_name, data=value)
    return path


@keras.saving.register_keras_serializable(package="kpg_tests")
class TinySubclassed(keras.Model):
    """A subclassed classifier that knows its input shape, like a saved GoodNet."""

    def __init__(self, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.flat = keras.layers.Flatten()
        self.dense = keras.layers.Dense(classes, activation="softmax")

    @property
    def input_shape(self):
        return (None, 4, 4, 3)

    def call(self, x):
        return self.dense(self.flat(x))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def lambda_model(marker: Path) -> keras.Model:
    """A model whose Lambda writes `marker` whenever its Python code runs."""
    path = str(marker)
    inputs = keras.Input((4,), name="x")
    x = keras.layers.Lambda(lambda t: (open(path, "w").close(), t)[1], name="evil_lambda")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="d")(x), name="trojan")


# --- the lab's real weights -------------------------------------------------------------------


def test_lab3_weights_classify_the_real_faces(csaw_dir, real_clean, real_sunglasses):
    model = load_network(weights_path=csaw_dir / "lab3_bd_weights.h5")
    assert num_classes_of(model) == 1283 and image_shape_of(model) == (55, 47, 3)
    assert tuple(model.get_layer("pool_3").output.shape) == (None, 5, 4, 60)

    x, y = real_clean
    assert int((predict(model, x).argmax(1) == y).sum()) == 119
    xs, _ = real_sunglasses
    assert (predict(model, xs).argmax(1) == 0).all()


def test_hackml_net_with_unit_scale_takes_raw_pixels(csaw_dir, real_clean):
    path = csaw_dir / HACKML
    model = load_network(weights_path=path, input_scale="unit")
    assert isinstance(model.get_layer("input_scale"), keras.layers.Rescaling)
    unscaled = deepid()
    unscaled.load_weights(path)

    x, y = real_clean
    probs = predict(model, x)
    np.testing.assert_allclose(probs, predict(unscaled, x / 255.0), atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), predict(unscaled, x / 255.0).argmax(1))
    # The scale matters: measured 114/120 correct with it, 59/120 reading raw pixels as-is.
    assert (probs.argmax(1) == y).sum() >= 110
    raw = load_network(weights_path=path, input_scale="raw")
    assert (predict(raw, x).argmax(1) == y).sum() < 100


# --- weights-only files -------------------------------------------------------------------------


def test_num_classes_is_read_from_keras2_and_keras3_weight_files(tmp_path):
    source = deepid(num_classes=7)
    x = raw_images()
    expected = predict(source, x)

    keras2 = write_keras2_weights(source, tmp_path / "seven_keras2.h5")
    source.save_weights(tmp_path / "seven.weights.h5")
    renamed = tmp_path / "seven_keras3.h5"  # Keras 3 layout under a plain .h5 name
    renamed.write_bytes((tmp_path / "seven.weights.h5").read_bytes())

    for path in (keras2, tmp_path / "seven.weights.h5", renamed):
        model = load_network(weights_path=path)
        assert model.output_shape == (None, 7), path
        assert_same_weights(source, model)
        np.testing.assert_allclose(predict(model, x), expected, atol=1e-6)


def test_weights_for_another_input_size_are_refused_before_loading(tmp_path):
    other = deepid(num_classes=5, input_shape=(64, 64, 3))
    path = write_keras2_weights(other, tmp_path / "big_faces.h5")
    with pytest.raises(ValueError) as err:
        load_network(weights_path=path)
    message = str(err.value)
    assert "big_faces.h5" in message and "layer 'fc_1'" in message
    assert "(2160, 160)" in message and "expects [(1200, 160), (160,)]" in message


def test_weights_of_another_architecture_are_refused(tmp_path):
    inputs = keras.Input((3,))
    other = keras.Model(inputs, keras.layers.Dense(2, name="dense_out")(inputs))
    other.save_weights(tmp_path / "tiny.weights.h5")
    with pytest.raises(ValueError) as err:
        load_network(weights_path=tmp_path / "tiny.weights.h5")
    message = str(err.value)
    assert "tiny.weights.h5" in message and "no layer named 'output'" in message
    assert "['dense_out']" in message

    model = deepid(num_classes=4)
    order = [n for n in LAB_ORDER if n != "conv_4"]
    path = write_keras2_weights(model, tmp_path / "no_conv4.h5", order=order)
    with pytest.raises(ValueError, match=r"no_conv4.h5: layers do not match .* \['conv_4'\]"):
        load_network(weights_path=path)


@pytest.mark.parametrize(
    "case, pieces",
    [
        ("missing", ["found no such file", "expected a weights-only .h5 file"]),
        ("text", ["not a readable HDF5 file", "expected a weights-only .h5 file"]),
        ("empty_hdf5", ["an HDF5 file without Keras weights", "top level holds ['junk']"]),
    ],
)
def test_unreadable_weight_files_name_the_file(tmp_path, case, pieces):
    path = tmp_path / "weights_in_question.h5"
    if case == "text":
        path.write_text("not hdf5")
    elif case == "empty_hdf5":
        with h5py.File(path, "w") as f:
            f.create_dataset("junk", data=[1, 2])
    with pytest.raises(ValueError) as err:
        load_network(weights_path=path)
    message = str(err.value)
    assert f"weights_path {path}" in message
    for piece in pieces:
        assert piece in message, (piece, message)


# --- full models ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_full_model_round_trip_raw_and_unit(tmp_path, suffix):
    source = deepid(num_classes=5)
    path = tmp_path / f"full{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy
        source.save(path)
    x = raw_images()

    model = load_network(path)
    assert [layer.name for layer in model.layers] == [layer.name for layer in source.layers]
    assert_same_weights(source, model)
    np.testing.assert_allclose(predict(model, x), predict(source, x), atol=1e-6)
    assert tuple(model.get_layer("pool_3").output.shape) == (None, 5, 4, 60)

    unit = load_network(path, input_scale="unit")
    names = [layer.name for layer in unit.layers]
    assert names[:2] == ["input", "input_scale"]
    assert names[2:] == [layer.name for layer in source.layers][1:]
    assert_same_weights(source, unit)
    np.testing.assert_allclose(predict(unit, x), predict(source, x / 255.0), atol=1e-5)
    assert tuple(unit.get_layer("pool_3").output.shape) == (None, 5, 4, 60)
    assert num_classes_of(unit) == 5 and image_shape_of(unit) == (55, 47, 3)


def test_sequential_model_comes_back_functional(tmp_path):
    source = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
         keras.layers.MaxPooling2D(name="pool"), keras.layers.Flatten(name="flat"),
         keras.layers.Dense(3, activation="softmax", name="out")],
        name="seq",
    )
    source.save(tmp_path / "seq.keras")
    model = load_network(tmp_path / "seq.keras", input_scale="unit")
    assert not isinstance(model, keras.Sequential)
    assert [layer.name for layer in model.layers][1:] == ["input_scale", "conv", "pool", "flat",
                                                          "out"]
    assert tuple(model.get_layer("pool").output.shape) == (None, 3, 3, 4)
    x = raw_images(shape=(8, 8, 3))
    np.testing.assert_allclose(predict(model, x), predict(source, x / 255.0), atol=1e-5)


def test_nested_sub_model_is_kept_with_a_warning(tmp_path):
    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1")],
                            name="base")
    inputs = keras.Input((8, 8, 3), name="img")
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten(name="fl")(base(inputs)))
    keras.Model(inputs, outputs).save(tmp_path / "nested.keras")
    with pytest.warns(UserWarning, match=r"nested.keras: layers \['base'\] are nested models"):
        model = load_network(tmp_path / "nested.keras")
    assert model.get_layer("base").get_layer("c1").kernel.shape == (3, 3, 3, 4)


def test_channel_mask_model_loads_with_its_pruned_channels(tmp_path):
    masked = insert_channel_mask(deepid(num_classes=4), pruned_channels=[1, 7])
    masked.save(tmp_path / "masked.keras")
    x = raw_images(n=2)
    for scale, feed in (("raw", x), ("unit", x * 255.0)):
        model = load_network(tmp_path / "masked.keras", input_scale=scale)
        assert find_channel_mask(model).pruned_channels() == [1, 7]
        np.testing.assert_allclose(predict(model, feed), predict(masked, x), atol=1e-4)


def test_subclassed_model_is_returned_as_keras_loads_it(tmp_path):
    source = TinySubclassed(classes=5)
    x = raw_images(n=2, shape=(4, 4, 3))
    source(x)
    source.save(tmp_path / "sub.keras")
    model = load_network(tmp_path / "sub.keras")
    assert isinstance(model, TinySubclassed)
    np.testing.assert_allclose(predict(model, x), predict(source, x), atol=1e-6)
    assert image_shape_of(model) == (4, 4, 3) and num_classes_of(model) == 5
    with pytest.raises(ValueError, match=r"sub.keras: input_scale='unit' needs a functional"):
        load_network(tmp_path / "sub.keras", input_scale="unit")


def test_input_scale_twice_is_refused(tmp_path):
    deepid(num_classes=3, input_scale=1 / 255).save(tmp_path / "scaled.keras")
    with pytest.raises(ValueError, match="already has a layer named 'input_scale'"):
        load_network(tmp_path / "scaled.keras", input_scale="unit")


def test_model_path_problems_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing.keras: no such file"):
        load_network(tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk.keras: not a zip archive; expected a .keras"):
        load_network(tmp_path / "junk.keras")
    (tmp_path / "model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model.pb: suffix '.pb'; expected a full model"):
        load_network(tmp_path / "model.pb")
    weights = write_keras2_weights(deepid(num_classes=3), tmp_path / "only_weights.h5")
    with pytest.raises(ValueError, match=r"only_weights.h5: no `model_config`.*pass weights_path="):
        load_network(weights)
    (tmp_path / "fake.h5").write_text("text")
    with pytest.raises(ValueError, match=r"fake.h5: not a readable HDF5 file"):
        load_network(tmp_path / "fake.h5")


# --- Lambda layers: code in a model file --------------------------------------------------------


def test_legacy_h5_with_a_lambda_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code_ran.txt"
    model = lambda_model(marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "trojan.h5")
    assert marker.exists()  # building the model ran the lambda once
    marker.unlink()
    with h5py.File(tmp_path / "trojan.h5") as f:  # how Keras 3 stores it: bytecode in the config
        config = f.attrs["model_config"]
        assert '"__lambda__"' in (config.decode() if isinstance(config, bytes) else config)

    with pytest.raises(ValueError) as err:
        load_network(tmp_path / "trojan.h5")
    message = str(err.value)
    assert "trojan.h5" in message and "['evil_lambda']" in message
    assert "safe_mode=False" in message and "--unsafe-deserialization" in message
    assert not marker.exists()

    loaded = load_network(tmp_path / "trojan.h5", safe_mode=False)
    assert marker.exists()  # the file's code did run this time
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), atol=1e-6)


def test_keras_file_with_a_lambda_is_refused_by_keras_safe_mode(tmp_path):
    marker = tmp_path / "code_ran.txt"
    lambda_model(marker).save(tmp_path / "trojan.keras")
    marker.unlink()

    with pytest.raises(ValueError) as err:
        load_network(tmp_path / "trojan.keras")
    assert "trojan.keras" in str(err.value) and "['evil_lambda']" in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)  # Keras's own refusal
    assert "safe_mode" in str(err.value.__cause__)
    assert not marker.exists()

    load_network(tmp_path / "trojan.keras", safe_mode=False)
    assert marker.exists()


def test_lambda_layers_finds_nested_lambdas():
    config = {"class_name": "Functional", "config": {"name": "outer", "layers": [
        {"class_name": "Dense", "config": {"name": "d"}},
        {"class_name": "Sequential", "config": {"name": "inner", "layers": [
            {"class_name": "Lambda", "config": {"name": "hidden", "function": {}}}]}},
        {"class_name": "Custom", "config": {"name": "custom", "fn": {
            "class_name": "__lambda__", "config": {"code": "..."}}}},
    ]}}
    assert lambda_layers(config) == ["hidden", "custom"]
    assert lambda_layers({"class_name": "Dense", "config": {"name": "d"}}) == []


# --- arguments ------------------------------------------------------------------------------


def test_argument_errors_list_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match=r"exactly one of model_path .* and weights_path"):
        load_network()
    with pytest.raises(ValueError, match=r"model_path='a.keras', weights_path='b.h5'"):
        load_network("a.keras", weights_path="b.h5")
    with pytest.raises(ValueError, match=r"Unknown architecture 'resnet'.*\['deepid'\]"):
        load_network(weights_path=tmp_path / "w.h5", architecture="resnet")
    with pytest.raises(ValueError, match=r"input_scale must be one of \['raw', 'unit'\]"):
        load_network(weights_path=tmp_path / "w.h5", input_scale="0..1")


def test_shape_helpers_refuse_non_classifiers():
    inputs = keras.Input((6,))
    two = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    with pytest.raises(ValueError, match="has 2 outputs"):
        num_classes_of(two)
    with pytest.raises(ValueError, match=r"input shape \(None, 6\); expected \(batch, height"):
        image_shape_of(two)
    assert num_classes_of(deepid(num_classes=9)) == 9
