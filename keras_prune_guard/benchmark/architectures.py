"""The networks the benchmark can backdoor: the lab's DeepID, and a small ResNet.

Both take raw 0..255 pixels (a `Rescaling(1/255)` layer named `input_scale`
follows the input) and end in a softmax Dense layer named `output`. The
ResNet is the other kind of classifier the defense has to handle: BatchNorm,
residual adds before the mask, and a global average pool feeding the Dense
head (the mask goes after `avg_pool`, and folds into `output`'s kernel rows).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from keras_prune_guard.model.loading import DEEPID_INPUT_SHAPE, deepid

#: Filters of the small ResNet's three stages (the mask covers the last one's).
RESNET_FILTERS = (16, 32, 64)


def _block(x, filters: int, stride: int, name: str):
    """A basic residual block: two 3x3 conv/BatchNorm, a projected shortcut when needed."""
    shortcut = x
    if stride != 1 or int(x.shape[-1]) != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                 name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(layers.BatchNormalization(name=f"{name}_bn1")(y))
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def small_resnet(
    num_classes: int,
    input_shape: tuple[int, int, int] = DEEPID_INPUT_SHAPE,
    input_scale: float | None = 1.0 / 255.0,
    filters: tuple[int, ...] = RESNET_FILTERS,
) -> keras.Model:
    """A small ResNet for 55x47 faces: a conv stem, one residual block per stage, GAP, Dense.

    Args:
        num_classes: size of the softmax output.
        input_shape: (height, width, channels). Defaults to (55, 47, 3).
        input_scale: factor of the `input_scale` Rescaling layer after the
            input (`None`: none). Defaults to 1/255.
        filters: filters per stage; stages after the first halve the size.
            Defaults to `RESNET_FILTERS` (16, 32, 64).

    Returns:
        An uncompiled functional model named `small_resnet`.

    Example:

    >>> small_resnet(10).get_layer("avg_pool").output.shape
    (None, 64)
    """
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    if input_scale is not None:
        x = layers.Rescaling(input_scale, name="input_scale")(x)
    x = layers.Conv2D(filters[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    x = layers.MaxPooling2D(2, name="stem_pool")(x)
    for stage, width in enumerate(filters):
        x = _block(x, width, 1 if stage == 0 else 2, name=f"stage{stage + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="small_resnet")


#: Architectures `train_badnet` (and `keras-prune-guard demo --architecture`) can backdoor.
BADNET_ARCHITECTURES: dict[str, Callable[[int], keras.Model]] = {
    "deepid": lambda num_classes: deepid(num_classes=num_classes, input_scale=1.0 / 255.0),
    "resnet": lambda num_classes: small_resnet(num_classes),
}


def build_badnet(architecture: str, num_classes: int) -> keras.Model:
    """A fresh, untrained network of `architecture` taking raw 0..255 pixels.

    Raises:
        ValueError: an unknown architecture (the message lists the known ones).

    Example:

    >>> build_badnet("resnet", 200).output_shape
    (None, 200)
    """
    if architecture not in BADNET_ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {list(BADNET_ARCHITECTURES)}. "
            f"Received: architecture={architecture!r}"
        )
    return BADNET_ARCHITECTURES[architecture](int(num_classes))


__all__ = ["BADNET_ARCHITECTURES", "RESNET_FILTERS", "build_badnet", "small_resnet"]
