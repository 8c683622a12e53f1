"""The built-in backdoor benchmark: generated faces, a sunglasses trigger and a trained BadNet.

Example (`ensure_benchmark` takes about a minute the first time, then is instant):

>>> from keras_prune_guard.benchmark import ensure_benchmark
>>> paths = ensure_benchmark()  # doctest: +SKIP
>>> paths.model.name, paths.valid.name, paths.bd_test.name  # doctest: +SKIP
('badnet-e12.h5', 'valid.h5', 'bd_test.h5')
"""

from keras_prune_guard.benchmark.architectures import BADNET_ARCHITECTURES, small_resnet
from keras_prune_guard.benchmark.badnet import (
    DEFAULT_EPOCHS,
    evaluate_badnet,
    train_badnet,
)
from keras_prune_guard.benchmark.cache import (
    BenchmarkPaths,
    benchmark_key,
    default_cache_dir,
    ensure_benchmark,
    model_key,
)
from keras_prune_guard.benchmark.dataset import (
    DEFAULT_IDENTITIES,
    FORMAT_VERSION,
    generate_benchmark,
    read_info,
)
from keras_prune_guard.benchmark.faces import FaceBatch, FaceTraits, render_faces, sample_traits
from keras_prune_guard.benchmark.trigger import (
    apply_sunglasses,
    bounding_box,
    bounding_boxes,
    sunglasses_mask,
)

__all__ = [
    "BADNET_ARCHITECTURES",
    "DEFAULT_EPOCHS",
    "DEFAULT_IDENTITIES",
    "FORMAT_VERSION",
    "BenchmarkPaths",
    "FaceBatch",
    "FaceTraits",
    "apply_sunglasses",
    "benchmark_key",
    "bounding_box",
    "bounding_boxes",
    "default_cache_dir",
    "ensure_benchmark",
    "evaluate_badnet",
    "generate_benchmark",
    "model_key",
    "read_info",
    "render_faces",
    "sample_traits",
    "small_resnet",
    "sunglasses_mask",
    "train_badnet",
]
