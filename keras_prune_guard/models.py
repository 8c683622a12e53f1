"""The lab's DeepID network, rebuilt layer by layer with the lab's layer names."""

from __future__ import annotations

import keras
from keras import layers

#: Input shape of the CSAW-HackML DeepID network (height, width, channels).
DEEPID_INPUT_SHAPE = (55, 47, 3)


def deepid(
    num_classes: int = 1283,
    input_shape: tuple[int, int, int] = DEEPID_INPUT_SHAPE,
    input_scale: float | None = None,
) -> keras.Model:
    """Builds the CSAW-HackML "DeepID" face classifier.

    The layer names are the lab's (`conv_1` ... `pool_3`, `fc_1`, `fc_2`,
    `output`), so the lab's weights-only `.h5` files load with
    `model.load_weights(path)`.

    Args:
        num_classes: size of the softmax output. Defaults to 1283.
        input_shape: (height, width, channels). Defaults to (55, 47, 3).
        input_scale: when given, a `Rescaling(input_scale)` layer named
            `input_scale` follows the input, so the model takes raw 0..255
            pixels while its weights expect scaled ones (the hackml2020 nets
            use 1/255). Defaults to `None` (no rescaling, the lab3 net).

    Returns:
        An uncompiled functional `keras.Model` named `deepid`.

    Example:

    >>> model = deepid(num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    if input_scale is not None:
        x = layers.Rescaling(input_scale, name="input_scale")(x)
    x = layers.Conv2D(20, 4, activation="relu", name="conv_1")(x)
    x = layers.MaxPooling2D(2, name="pool_1")(x)
    x = layers.Conv2D(40, 3, activation="relu", name="conv_2")(x)
    x = layers.MaxPooling2D(2, name="pool_2")(x)
    x = layers.Conv2D(60, 3, activation="relu", name="conv_3")(x)
    pool_3 = layers.MaxPooling2D(2, name="pool_3")(x)
    fc_1 = layers.Dense(160, name="fc_1")(layers.Flatten(name="flatten_1")(pool_3))
    conv_4 = layers.Conv2D(80, 2, activation="relu", name="conv_4")(pool_3)
    fc_2 = layers.Dense(160, name="fc_2")(layers.Flatten(name="flatten_2")(conv_4))
    x = layers.Add(name="add_1")([fc_1, fc_2])
    x = layers.Activation("relu", name="activation_1")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="deepid")
