"""keras-prune-guard: repair backdoored Keras classifiers by pruning, flag triggered inputs."""

from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.models import deepid
from keras_prune_guard.surgery import (
    find_channel_mask,
    insert_channel_mask,
    last_pooling_layer,
    split_at_mask,
    strip_channel_mask,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelMask",
    "deepid",
    "find_channel_mask",
    "insert_channel_mask",
    "last_pooling_layer",
    "split_at_mask",
    "strip_channel_mask",
]
