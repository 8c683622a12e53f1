"""keras-prune-guard: repair backdoored Keras classifiers by pruning, flag triggered inputs.

The flow, one module per arrow:
B -> `insert_channel_mask` (surgery) -> `channel_ranking` (ranking) -> `sweep` (sweep)
-> B' snapshots (`PruningCallback`, `prune`: callbacks) -> `GoodNetModel` (goodnet)
-> `export_goodnet` (export) -> `evaluate` (evaluate) -> report / saliency.

Importing the package registers `ChannelMask` and `GoodNetModel` with Keras, so
`keras.saving.load_model` reads the `.keras` files this package writes.
"""

from keras_prune_guard.callbacks import PruningCallback, PruningResult, prune
from keras_prune_guard.evaluate import evaluate
from keras_prune_guard.export import export_goodnet, save_model, save_plain_h5
from keras_prune_guard.finetune import fine_tune
from keras_prune_guard.goodnet import GoodNetModel
from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.models import deepid, load_network
from keras_prune_guard.ranking import channel_ranking, rank_channels
from keras_prune_guard.repair import repair
from keras_prune_guard.surgery import (
    find_channel_mask,
    insert_channel_mask,
    last_pooling_layer,
    pruned_copy,
    split_at_mask,
    strip_channel_mask,
)
from keras_prune_guard.sweep import SweepResult, sweep

__version__ = "0.1.0"

__all__ = [
    "ChannelMask",
    "GoodNetModel",
    "PruningCallback",
    "PruningResult",
    "SweepResult",
    "channel_ranking",
    "deepid",
    "evaluate",
    "export_goodnet",
    "find_channel_mask",
    "fine_tune",
    "insert_channel_mask",
    "last_pooling_layer",
    "load_network",
    "prune",
    "pruned_copy",
    "rank_channels",
    "repair",
    "save_model",
    "save_plain_h5",
    "split_at_mask",
    "strip_channel_mask",
    "sweep",
]
