"""Tracing a model's layer graph, nested models inlined (keras_prune_guard.model.graph)."""

import keras
import numpy as np
import pytest

from keras_prune_guard import deepid
from keras_prune_guard.model.graph import flatten_nested, is_graph_model, leaf_layers, trace


def nested_model():
    inner_in = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(6, 3, padding="same", name="inner_conv")(inner_in)
    inner = keras.Model(inner_in, keras.layers.ReLU(name="inner_relu")(x), name="inner")
    return keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Conv2D(4, 3, name="stem"),
                             inner, keras.layers.GlobalAveragePooling2D(name="gap"),
                             keras.layers.Dense(2, name="out")], name="outer")


def test_trace_names_nested_layers_by_path_and_orders_calls():
    graph = trace(nested_model())
    paths = [call.path for call in graph.calls]
    assert paths == ["stem", "inner/inner_conv", "inner/inner_relu", "inner", "gap", "out"]
    relu = graph.find("inner_relu")[0]
    assert relu.path == "inner/inner_relu"
    assert [c.path for c in graph.parents(relu)] == ["inner/inner_conv"]
    assert [c.path for c in graph.consumers(relu.outputs[0])] == ["gap"]


def test_flatten_shares_the_layers_and_computes_the_same():
    model = nested_model()
    flat = flatten_nested(model)
    assert [layer.name for layer in flat.layers[1:]] == [
        "stem", "inner_conv", "inner_relu", "gap", "out"]
    assert flat.get_layer("inner_conv") is model.get_layer("inner").get_layer("inner_conv")
    x = np.random.default_rng(0).normal(size=(3, 10, 10, 3)).astype("float32")
    np.testing.assert_array_equal(flat.predict(x, verbose=0), model.predict(x, verbose=0))
    assert flat.count_params() == model.count_params()


def test_leaf_layers_and_graph_kinds():
    model = nested_model()
    assert [layer.name for layer in leaf_layers(model)] == [
        "stem", "inner_conv", "inner_relu", "gap", "out"]
    assert is_graph_model(model) and is_graph_model(deepid(num_classes=3))
    assert not is_graph_model(keras.layers.Dense(2))


def test_trace_refuses_subclassed_models():
    class Tiny(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="subclassed model of type Tiny"):
        trace(Tiny())
