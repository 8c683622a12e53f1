"""`GoodNetModel`: B and B' side by side, N+1 outputs, class N for "backdoored input"."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_prune_guard._fs.atomic import atomic_path
from keras_prune_guard.detect.calibrate import check_false_alarm, threshold_for
from keras_prune_guard.detect.scores import (  # noqa: F401 (first_argmax: its 0.2 home)
    DEFAULT_SCORE,
    SCORES,
    check_score,
    first_argmax,
    score_arrays,
)
from keras_prune_guard.layers import ChannelMask
from keras_prune_guard.model.graph import as_functional, flatten_nested, is_graph_model, leaf_layers
from keras_prune_guard.model.surgery import find_channel_mask, split_at_mask


def _same_weights_apart_from_mask(bad: keras.Model, repaired: keras.Model) -> bool:
    """True when `repaired` is `bad` plus a ChannelMask (no retraining).

    Layers are matched by name over the leaf layers (nested models looked into,
    InputLayers left out), so a Sequential B, a B with a nested backbone and a
    B' whose nested models were inlined by `insert_channel_mask` all compare.
    """
    if not (is_graph_model(bad) and is_graph_model(repaired)):
        return False
    theirs = leaf_layers(repaired)
    if sum(isinstance(layer, ChannelMask) for layer in theirs) != 1:
        return False
    twins = {layer.name: layer for layer in theirs if not isinstance(layer, ChannelMask)}
    mine = leaf_layers(bad)
    if len(twins) != len(mine) or len(theirs) != len(mine) + 1:
        return False
    for layer in mine:
        twin = twins.get(layer.name)
        if twin is None or type(twin) is not type(layer):
            return False
        ours, other = layer.get_weights(), twin.get_weights()
        if len(ours) != len(other) or not all(np.array_equal(a, b) for a, b in zip(ours, other)):
            return False
    return True


def _image_shape(model: keras.Model, other: keras.Model) -> tuple:
    """(H, W, C) that `model` takes; an unbuilt Sequential model is built with `other`'s."""
    if isinstance(model, keras.Sequential) and not model.built:
        model.build((None, *_image_shape(other, model)))
    if is_graph_model(model):
        return tuple(as_functional(model).input_shape[1:])
    build = model.get_build_config() or {}
    shape = build.get("input_shape")
    if shape is None:
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) has no known input shape: call "
            "it on a batch of images (or build it) before making a GoodNet."
        )
    return tuple(shape[1:])


def _as_network(model: keras.Model, shape: tuple, name: str) -> keras.Model:
    """`model` as a single-output functional model named `name` (for side-by-side use)."""
    if is_graph_model(model):
        graph = as_functional(model)
        return keras.Model(graph.inputs, graph.outputs[0], name=name)
    inputs = keras.Input(shape=shape)
    return keras.Model(inputs, model(inputs), name=name)


def _checked_threshold(threshold) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or \
            not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number or None. Received: "
                         f"threshold={threshold!r}")
    return float(threshold)


def build_networks(bad_model: keras.Model, repaired_model: keras.Model) -> keras.Model:
    """Builds the two-output functional model `x -> [B(x), B'(x)]` a GoodNet runs.

    When B' is B plus a mask, the result holds B's layers once: the layers
    before the mask run once, and the layers after it run on the activations
    and on the masked activations. Otherwise it holds both networks. B and B'
    may be functional, Sequential (built, or not yet built: B is then built
    with B''s input shape), hold nested models, or be subclassed (held apart).

    Args:
        bad_model: the backdoored network B.
        repaired_model: the repaired network B' (pruned, or fine-tuned).

    Returns:
        A functional model named `goodnet_networks` with two outputs.

    Raises:
        ValueError: the two networks differ in input shape or number of classes.
    """
    bad_shape = _image_shape(bad_model, repaired_model)
    repaired_shape = _image_shape(repaired_model, bad_model)
    bad = _as_network(bad_model, bad_shape, "bad_network")
    repaired = _as_network(repaired_model, repaired_shape, "repaired_network")
    for what, a, b in (
        ("input shape", bad.input_shape, repaired.input_shape),
        ("output shape", bad.output_shape, repaired.output_shape),
    ):
        if tuple(a) != tuple(b):
            raise ValueError(
                f"B and B' must have the same {what}. Received: bad_model {what} {a}, "
                f"repaired_model {what} {b}"
            )
    inputs = keras.Input(shape=bad_shape, name="images")
    if _same_weights_apart_from_mask(bad_model, repaired_model):
        outputs = _shared_outputs(as_functional(repaired_model), inputs)
    else:
        outputs = [bad(inputs), repaired(inputs)]
    return keras.Model(inputs, outputs, name="goodnet_networks")


def _shared_outputs(masked: keras.Model, inputs) -> list:
    """`[B(x), B'(x)]` from the layers of a masked model, as one flat graph.

    The layers that do not depend on the mask are called once; the layers after
    it are called twice, on the activations and on the masked activations. The
    graph stays flat (no nested models), so `bad_network()`/`repaired_network()`
    end in the real output layer, as tools such as tf-keras-vis expect.
    """
    masked = flatten_nested(masked)
    source = find_channel_mask(masked)
    mask = ChannelMask(pruned_channels=source.pruned_channels(), name=source.name)
    after = {layer.name for layer in split_at_mask(masked)[1].layers}
    unmasked: dict[str, object] = {}

    def without_mask(layer, *args, **kwargs):
        if isinstance(layer, ChannelMask):
            return args[0]
        unmasked[layer.name] = layer(*args, **kwargs)
        return unmasked[layer.name]

    def with_mask(layer, *args, **kwargs):
        if isinstance(layer, ChannelMask):
            return mask(args[0])
        return layer(*args, **kwargs) if layer.name in after else unmasked[layer.name]

    structured = [inputs] if isinstance(masked.input, (list, tuple)) else inputs
    replay = {"input_tensors": structured, "clone_function": lambda layer: layer}
    bad = keras.models.clone_model(masked, call_function=without_mask, **replay).output
    repaired = keras.models.clone_model(masked, call_function=with_mask, **replay).output
    return [bad, repaired]


@keras.saving.register_keras_serializable(package="keras_prune_guard")
class GoodNetModel(keras.Model):
    """Runs B and B' and outputs N+1 class probabilities.

    Without a threshold (0.2's rule) an input is flagged where the argmaxes of
    B and B' differ. With one, it is flagged where its detection score (`score`,
    from B's and B''s probabilities: `detect.scores`) is above `threshold`;
    `calibrate` sets the threshold on held-out clean images for a false-alarm
    budget. A flagged input's output is one-hot class N (0-based: 1283 for the
    lab's network), meaning "backdoored input"; otherwise it is B''s
    probabilities with a zero last column.

    When B' is B plus a `ChannelMask` (pruned, not retrained) the model holds
    B's weights once plus the mask, and runs the layers before the mask once;
    that holds for functional and Sequential models (built or not yet called)
    and for models with nested backbones, compared layer by layer by name.
    When B' has its own weights (fine-tuned) it holds both networks, and so it
    does for a subclassed model, whose mask sits inside its own `call`.

    Args:
        bad_model: the backdoored network B. Defaults to `None` (only with
            `networks`).
        repaired_model: the repaired network B'. Defaults to `None`.
        networks: a prebuilt two-output model (see `build_networks`); used by
            `from_config`. Defaults to `None`.
        score: the detection score's name (`detect.scores.SCORES`). Defaults
            to "confidence_drop".
        threshold: flag inputs whose score is above it. Defaults to `None`
            (flag where the two classes differ).
        false_alarm: the clean false-alarm budget (a fraction) the threshold
            was calibrated for, kept for reports. Defaults to `None`.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:

    >>> result = prune(bad_model, x_valid, y_valid)  # doctest: +SKIP
    >>> goodnet = GoodNetModel(bad_model, result.snapshots[4.0])  # doctest: +SKIP
    >>> goodnet = goodnet.calibrate(x_clean_held_out, false_alarm=0.01)  # doctest: +SKIP
    >>> goodnet.predict(x_test).argmax(-1)  # doctest: +SKIP
    """

    def __init__(
        self,
        bad_model: keras.Model | None = None,
        repaired_model: keras.Model | None = None,
        *,
        networks: keras.Model | None = None,
        score: str = DEFAULT_SCORE,
        threshold: float | None = None,
        false_alarm: float | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", "goodnet")
        super().__init__(**kwargs)
        if networks is None:
            if bad_model is None or repaired_model is None:
                raise ValueError(
                    "GoodNetModel needs bad_model and repaired_model (or networks). "
                    f"Received: bad_model={bad_model!r}, repaired_model={repaired_model!r}"
                )
            networks = build_networks(bad_model, repaired_model)
        self.networks = networks
        self.score = check_score(score)
        self.threshold = _checked_threshold(threshold)
        self.false_alarm = None if false_alarm is None else check_false_alarm(false_alarm)
        self.num_classes = int(networks.outputs[0].shape[-1])
        self.image_shape = tuple(int(d) for d in networks.input_shape[1:])
        self._backdoor_row = np.eye(self.num_classes + 1, dtype="float32")[-1]
        self.built = True

    @property
    def input_shape(self) -> tuple:
        """(None, H, W, C): the images this GoodNet takes."""
        return (None, *self.image_shape)

    @property
    def shares_layers(self) -> bool:
        """True when B' is B plus a mask and the layers are held once."""
        return any(isinstance(layer, ChannelMask) for layer in self.networks.layers)

    def bad_network(self) -> keras.Model:
        """B as a functional model (shares layers with this GoodNet)."""
        return keras.Model(self.networks.inputs, self.networks.outputs[0], name="bad_network")

    def repaired_network(self) -> keras.Model:
        """B' as a functional model (shares layers with this GoodNet)."""
        return keras.Model(
            self.networks.inputs, self.networks.outputs[1], name="repaired_network"
        )

    def network_outputs(self, x, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """B's and B''s class probabilities of every image.

        Args:
            x: (N, H, W, C) images in the networks' pixel range.
            batch_size: images per call. Defaults to 512.

        Returns:
            `(bad, repaired)`, two float32 (N, classes) arrays.
        """
        bad, repaired = self.networks.predict(np.asarray(x, "float32"), batch_size=batch_size,
                                              verbose=0)
        return bad, repaired

    def detection_scores(self, x, batch_size: int = 512) -> np.ndarray:
        """The detection score (`self.score`) of every image, float64 (N,).

        Args:
            x: (N, H, W, C) images in the networks' pixel range.
            batch_size: images per call. Defaults to 512.

        Returns:
            The scores (higher = more suspicious).
        """
        return score_arrays(self.score, *self.network_outputs(x, batch_size))

    def calibrate(self, clean, false_alarm: float, **kwargs) -> GoodNetModel:
        """A GoodNet on the same networks whose threshold flags at most `false_alarm` of
        `clean`.

        Args:
            clean: held-out clean (N, H, W, C) images, never the ones B' was
                trained on (their scores are lower than unseen images').
            false_alarm: the budget, a fraction in (0, 0.5].
            **kwargs: `GoodNetModel` arguments (`name`, `score`).

        Returns:
            A new `GoodNetModel` sharing this one's networks.
        """
        false_alarm = check_false_alarm(false_alarm)
        kwargs.setdefault("name", self.name)
        score = kwargs.pop("score", self.score)
        probe = self if score == self.score else GoodNetModel(networks=self.networks,
                                                              score=score)
        threshold = threshold_for(probe.detection_scores(clean), false_alarm)
        return GoodNetModel(networks=self.networks, score=score, threshold=threshold,
                            false_alarm=false_alarm, **kwargs)

    def call(self, inputs):
        bad, repaired = self.networks(inputs)
        if self.threshold is None:
            flag = ops.not_equal(first_argmax(bad), first_argmax(repaired))
        else:
            flag = ops.greater(SCORES[self.score](bad, repaired), self.threshold)
        padded = ops.pad(repaired, [[0, 0], [0, 1]])
        # A constant (not a captured tensor), so converters see no extra graph input.
        flagged = ops.convert_to_tensor(self._backdoor_row, dtype=padded.dtype)
        return ops.where(ops.expand_dims(flag, -1), flagged, padded)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes + 1)

    def get_config(self):
        return {
            **super().get_config(),
            "networks": keras.saving.serialize_keras_object(self.networks),
            "score": self.score,
            "threshold": self.threshold,
            "false_alarm": self.false_alarm,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        networks = keras.saving.deserialize_keras_object(config.pop("networks"))
        return cls(networks=networks, **config)

    def export(
        self, filepath, format="tf_saved_model", verbose=True, input_signature=None, **kwargs
    ):
        """Writes one SavedModel whose `serve` endpoint maps images to N+1 outputs.

        The endpoint takes float32 images (None, H, W, C) in the pixel range of
        the lab's files (0..255). The folder is written to a temporary name and
        renamed into place, so a failure never leaves a half-written model.

        Args:
            filepath: the SavedModel folder to write.
            format: a `keras.Model.export` format: "tf_saved_model", "onnx"
                or "litert" (`export.export_goodnet` writes the last two with
                built-in ops only and checks them in their runtimes). Defaults
                to "tf_saved_model".
            verbose: print what was written. Defaults to `True`.
            input_signature: defaults to `None`, meaning float32 (None, H, W, C).
            **kwargs: passed to `keras.Model.export`.
        """
        if input_signature is None:
            input_signature = [
                tf.TensorSpec((None, *self.image_shape), tf.float32, name="images")
            ]
        self(np.zeros((1, *self.image_shape), dtype="float32"))  # export needs a call first
        with atomic_path(filepath, is_dir=True) as tmp:
            super().export(
                str(tmp), format=format, verbose=verbose, input_signature=input_signature, **kwargs
            )
