"""A small zoo of Keras image classifiers for tests and benchmarks (random weights, tiny inputs).

Each entry builds a classifier of a kind the defense supports, at 32 x 32 x 3
and `ZOO_CLASSES` classes, with `weights=None` (nothing is downloaded), and
names the layer the default rule (`surgery.last_pooling_layer`) must choose.
`spread_head` re-centres a network's last Dense layer on some images so that
a randomly initialised network predicts different classes for different
images (otherwise it tends to give every image the same class, and pruning
would change nothing).

Example:

>>> model = ZOO["mobilenetv2"].build()
>>> x, y = zoo_data(model)
>>> ZOO["mobilenetv2"].expected_mask(model)
'global_average_pooling2d'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.graph import trace

#: Input shape and number of classes of every zoo model.
ZOO_SHAPE = (32, 32, 3)
ZOO_CLASSES = 5
L = keras.layers
A = keras.applications


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo classifier, and where its mask must go by default.

    Attributes:
        build: returns a fresh model (random weights).
        mask_layer: the name `last_pooling_layer` must return (for a
            subclassed model: the name of its own ChannelMask), or, for a layer
            Keras names with a counter (`global_average_pooling2d_6` when other
            models were built first), a function finding it in the built model.
        kind: "functional", "sequential", "nested" or "subclassed".
    """

    build: Callable[[], keras.Model]
    mask_layer: str | Callable[[keras.Model], str]
    kind: str

    def expected_mask(self, model: keras.Model) -> str:
        """The name of the layer the mask must follow in `model` (built by `build`)."""
        return self.mask_layer(model) if callable(self.mask_layer) else self.mask_layer


def _only(layer_type) -> Callable[[keras.Model], str]:
    """Finds the one layer of `layer_type` in a model (whatever counter Keras named it with)."""
    def find(model: keras.Model) -> str:
        (name,) = [layer.name for layer in model.layers if isinstance(layer, layer_type)]
        return name

    return find


def _application(factory) -> Callable[[], keras.Model]:
    return lambda: factory(weights=None, input_shape=ZOO_SHAPE, classes=ZOO_CLASSES)


def sequential_cnn() -> keras.Sequential:
    """A plain Sequential CNN (Input, Conv/BatchNorm/ReLU blocks, MaxPooling, Flatten, Dense)."""
    return keras.Sequential([
        keras.Input(ZOO_SHAPE),
        L.Rescaling(1.0 / 255.0, name="scale"),
        L.Conv2D(16, 3, padding="same", name="conv_a"),
        L.BatchNormalization(name="bn_a"),
        L.ReLU(name="relu_a"),
        L.MaxPooling2D(name="pool_a"),
        L.Conv2D(24, 3, padding="same", name="conv_b"),
        L.BatchNormalization(name="bn_b"),
        L.ReLU(name="relu_b"),
        L.MaxPooling2D(4, name="pool_b"),
        L.Flatten(name="flatten"),
        L.Dropout(0.3, name="dropout"),
        L.Dense(ZOO_CLASSES, activation="softmax", name="predictions"),
    ], name="sequential_cnn")


def _backbone() -> keras.Model:
    return A.ResNet50(include_top=False, weights=None, input_shape=ZOO_SHAPE)


def transfer_sequential() -> keras.Sequential:
    """`Sequential([Rescaling, ResNet50(include_top=False), GAP, Dropout, Dense])`: nested."""
    return keras.Sequential([
        keras.Input(ZOO_SHAPE),
        L.Rescaling(1.0 / 127.5, offset=-1.0, name="scale"),
        _backbone(),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dropout(0.2, name="dropout"),
        L.Dense(ZOO_CLASSES, activation="softmax", name="predictions"),
    ], name="transfer_sequential")


def transfer_functional() -> keras.Model:
    """The functional form of `transfer_sequential`."""
    inputs = keras.Input(ZOO_SHAPE, name="images")
    x = L.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)
    x = _backbone()(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, name="dropout")(x)
    outputs = L.Dense(ZOO_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="transfer_functional")


def batchnorm_logits() -> keras.Model:
    """A functional CNN with Normalization, BatchNorm, a residual add and a concatenation
    before the mask, and a logits output (no softmax)."""
    inputs = keras.Input(ZOO_SHAPE, name="images")
    x = L.Normalization(mean=127.5, variance=75.0**2, name="normalize")(inputs)
    x = L.ReLU(name="relu_0")(L.BatchNormalization(name="bn_0")(L.Conv2D(16, 3, name="conv_0")(x)))
    y = L.BatchNormalization(name="bn_1")(L.Conv2D(16, 3, padding="same", name="conv_1")(x))
    x = L.ReLU(name="relu_1")(L.Add(name="residual")([x, y]))
    x = L.MaxPooling2D(name="pool_1")(x)
    z = L.ReLU(name="relu_2")(L.Conv2D(8, 1, name="conv_2")(x))
    x = L.Concatenate(name="concat")([x, z])
    x = L.BatchNormalization(name="bn_2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(ZOO_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="batchnorm_logits")


@keras.saving.register_keras_serializable(package="keras_prune_guard")
class ZooSubclassed(keras.Model):
    """A subclassed classifier that applies its own `ChannelMask` (named "features_mask").

    Args:
        num_classes: size of the softmax output. Defaults to `ZOO_CLASSES`.
        **kwargs: base `keras.Model` arguments.

    Example:

    >>> model = ZooSubclassed()
    >>> model(np.zeros((1, 32, 32, 3), "float32")).shape
    TensorShape([1, 5])
    """

    def __init__(self, num_classes: int = ZOO_CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.scale = L.Rescaling(1.0 / 255.0)
        self.conv_a = L.Conv2D(16, 3, activation="relu")
        self.pool = L.MaxPooling2D()
        self.conv_b = L.Conv2D(32, 3)
        self.bn = L.BatchNormalization()
        self.gap = L.GlobalAveragePooling2D()
        self.features_mask = ChannelMask(name="features_mask")
        self.classify = L.Dense(self.num_classes, activation="softmax")

    def call(self, inputs):
        x = self.pool(self.conv_a(self.scale(inputs)))
        x = keras.ops.relu(self.bn(self.conv_b(x)))
        return self.classify(self.features_mask(self.gap(x)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def subclassed() -> keras.Model:
    """A built `ZooSubclassed`."""
    model = ZooSubclassed(name="zoo_subclassed")
    model(np.zeros((1, *ZOO_SHAPE), dtype="float32"))
    return model


#: The zoo: name -> how to build it and the layer its mask goes after by default.
ZOO: dict[str, ZooEntry] = {
    "resnet50": ZooEntry(_application(A.ResNet50), "avg_pool", "functional"),
    "mobilenetv2": ZooEntry(_application(A.MobileNetV2), _only(L.GlobalAveragePooling2D),
                            "functional"),
    "efficientnetb0": ZooEntry(_application(A.EfficientNetB0), "avg_pool", "functional"),
    "densenet121": ZooEntry(_application(A.DenseNet121), "avg_pool", "functional"),
    "vgg16": ZooEntry(_application(A.VGG16), "block5_pool", "functional"),
    "sequential_cnn": ZooEntry(sequential_cnn, "pool_b", "sequential"),
    "transfer_sequential": ZooEntry(transfer_sequential, "gap", "nested"),
    "transfer_functional": ZooEntry(transfer_functional, "gap", "nested"),
    "batchnorm_logits": ZooEntry(batchnorm_logits, "gap", "functional"),
    "subclassed": ZooEntry(subclassed, "features_mask", "subclassed"),
}


def zoo_images(count: int, seed: int = 0) -> np.ndarray:
    """`count` random 32 x 32 RGB images, float32 in 0..255: smooth colour blobs plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : ZOO_SHAPE[0], 0 : ZOO_SHAPE[1]]
    images = np.empty((count, *ZOO_SHAPE), dtype="float32")
    for i in range(count):
        r0, c0 = rng.uniform(4, 28, size=2)
        blob = np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / rng.uniform(20, 120))
        colour = rng.uniform(0, 255, size=3)
        images[i] = blob[..., None] * colour + rng.uniform(0, 60, size=(*ZOO_SHAPE[:2], 3))
    return np.clip(images, 0, 255)


def spread_head(model: keras.Model, images: np.ndarray, seed: int = 0) -> None:
    """Re-centres the model's last Dense layer on `images` (in place).

    Row c of the new kernel is random normal divided by (mean of feature c +
    the median feature mean), so every feature weighs about alike, scaled so
    that the logits spread by about 1 across `images`; the bias cancels the
    features' mean. The logits then follow how each image's features differ
    from the others', and pruning one channel moves them a little.

    Args:
        model: a zoo model (functional, Sequential, nested or `ZooSubclassed`).
        images: a few images.
        seed: seeds the kernel. Defaults to 0.
    """
    dense, features = _last_dense_and_features(model, images)
    features = features.reshape(-1, features.shape[-1]).astype("float64")
    rng = np.random.default_rng(seed)
    means = np.abs(features.mean(axis=0))
    kernel = rng.standard_normal(dense.kernel.shape) / (means + np.median(means) + 1e-6)[:, None]
    spread = float(((features - features.mean(axis=0)) @ kernel).std())
    kernel /= spread + 1e-12
    bias = -(features.mean(axis=0) @ kernel)
    dense.set_weights([kernel.astype("float32"), bias.astype("float32")])


def _last_dense_and_features(model: keras.Model, images: np.ndarray):
    if isinstance(model, ZooSubclassed):
        seen: list[np.ndarray] = []
        with model.features_mask.probing(seen.append):
            model(images, training=False)
        return model.classify, np.concatenate(seen)
    graph = trace(model)
    call = graph.producer(graph.outputs[0])
    while not isinstance(call.layer, keras.layers.Dense):
        call = graph.parents(call)[0]
    head = keras.Model(graph.model.inputs, call.inputs[0])
    return call.layer, keras.ops.convert_to_numpy(head(images, training=False))


def zoo_data(model: keras.Model, count: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images for `model` and labels: its own predicted classes after `spread_head`.

    Args:
        model: a zoo model; its last Dense layer is re-centred (see `spread_head`).
        count: images. Defaults to 24.
        seed: seeds the images and the head. Defaults to 0.

    Returns:
        `(x, y)`: float32 (count, 32, 32, 3) in 0..255 and int64 (count,), so that
        the unpruned network is 100% accurate and each pruned channel can cost accuracy.
    """
    x = zoo_images(count, seed)
    spread_head(model, x, seed)
    y = np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)
    return x, y.astype("int64")


__all__ = [
    "ZOO",
    "ZOO_CLASSES",
    "ZOO_SHAPE",
    "ZooEntry",
    "ZooSubclassed",
    "spread_head",
    "zoo_data",
    "zoo_images",
]
