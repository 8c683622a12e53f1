"""keras-prune-guard: repair backdoored Keras classifiers by pruning, flag triggered inputs.

The flow, one module per arrow, one `PruneConfig` travelling the whole way:
B -> `insert_channel_mask` (surgery) -> activations entering the mask (activations)
-> `rank_channels` (ranking) -> `sweep` (sweep) -> B' snapshots (`prune`, `PruningCallback`)
-> (`fine_tune`: B'') -> `GoodNetModel` (goodnet) -> `export_goodnet` (export)
-> `evaluate` (evaluate) -> `repair` returns a `RepairResult` -> report / saliency.

Importing the package registers `ChannelMask` and `GoodNetModel` with Keras, so
`keras.saving.load_model` reads the `.keras` files this package writes.
"""

from keras_prune_guard.callbacks import PruningCallback
from keras_prune_guard.config import FineTuneConfig, PruneConfig, RunOptions
from keras_prune_guard.defend.finetune import fine_tune
from keras_prune_guard.deploy.evaluate import evaluate
from keras_prune_guard.deploy.export import export_goodnet, save_model, save_plain_h5
from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.goodnet import GoodNetModel
from keras_prune_guard.model.loading import deepid, load_network
from keras_prune_guard.model.surgery import (
    find_channel_mask,
    insert_channel_mask,
    last_pooling_layer,
    pruned_copy,
    split_at_mask,
    strip_channel_mask,
)
from keras_prune_guard.pruning.prune import PruningResult, prune
from keras_prune_guard.pruning.ranking import channel_ranking, rank_channels
from keras_prune_guard.pruning.sweep import sweep
from keras_prune_guard.repair import repair
from keras_prune_guard.results import (
    CurvePoint,
    RepairResult,
    Scores,
    Snapshot,
    SweepResult,
    ThresholdResult,
)

__version__ = "0.2.0"

__all__ = [
    "ChannelMask",
    "CurvePoint",
    "FineTuneConfig",
    "GoodNetModel",
    "PruneConfig",
    "PruningCallback",
    "PruningResult",
    "RepairResult",
    "RunOptions",
    "Scores",
    "Snapshot",
    "SweepResult",
    "ThresholdResult",
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
