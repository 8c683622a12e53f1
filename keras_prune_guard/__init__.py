"""keras-prune-guard: repair backdoored Keras classifiers by pruning, flag triggered inputs.

The flow, one room per stage (docs/layout.md), one `PruneConfig` travelling the whole way:
B + D_valid -> `data/` (the one validator) -> `insert_channel_mask` (`model/surgery`)
-> `pruning/`: activations -> `rank_channels` -> `sweep` -> B' (`prune`, `PruningCallback`)
-> `defend/`: `fine_tune` -> B'' -> `GoodNetModel` (`detect/goodnet`)
-> `detect/`: a threshold set on held-out clean images for a false-alarm budget, STRIP
-> `deploy/`: `export_goodnet`, `evaluate` -> `repair` returns a `RepairResult` -> `report/`.

This module is the public API only. Importing it registers `ChannelMask` and `GoodNetModel`
with Keras, so `keras.saving.load_model` reads the `.keras` files this package writes.
"""

from keras_prune_guard._compat import package_getattr as __getattr__  # noqa: F401
from keras_prune_guard.callbacks import PruningCallback
from keras_prune_guard.config import DetectConfig, FineTuneConfig, PruneConfig, RunOptions
from keras_prune_guard.defend.finetune import fine_tune
from keras_prune_guard.deploy.evaluate import evaluate
from keras_prune_guard.deploy.export import export_goodnet, save_model
from keras_prune_guard.detect.goodnet import GoodNetModel
from keras_prune_guard.detect.strip import StripConfig, StripDetector
from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.loading import deepid, load_network
from keras_prune_guard.model.surgery import insert_channel_mask, last_pooling_layer
from keras_prune_guard.pruning.prune import PruningResult, prune
from keras_prune_guard.pruning.ranking import rank_channels
from keras_prune_guard.pruning.sweep import sweep
from keras_prune_guard.repair import repair
from keras_prune_guard.results import (
    CurvePoint,
    Detection,
    RepairResult,
    Scores,
    Snapshot,
    SweepResult,
    ThresholdResult,
)

__version__ = "0.3.0"

__all__ = [
    "ChannelMask",
    "CurvePoint",
    "DetectConfig",
    "Detection",
    "FineTuneConfig",
    "GoodNetModel",
    "PruneConfig",
    "PruningCallback",
    "PruningResult",
    "RepairResult",
    "RunOptions",
    "Scores",
    "Snapshot",
    "StripConfig",
    "StripDetector",
    "SweepResult",
    "ThresholdResult",
    "deepid",
    "evaluate",
    "export_goodnet",
    "fine_tune",
    "insert_channel_mask",
    "last_pooling_layer",
    "load_network",
    "prune",
    "rank_channels",
    "repair",
    "save_model",
    "sweep",
]
