"""RNP, Reconstructive Neuron Pruning (Li et al. 2023): unlearn, then learn which channels
recover the clean accuracy; the channels the recovery leaves low carry the backdoor.

Follows the reference code (bboylyg/RNP `main.py`): unlearning is gradient ascent on the
clean cross-entropy (SGD 0.01, momentum 0.9, weight decay 5e-4, gradient norm clipped at
20, the rate divided by 10 at epochs 10 and 20) until an epoch's clean accuracy is at most
20%; the masks (one per channel, in [0, 1], starting at 1) are then learnt on the
unlearned network for 20 epochs (SGD 0.2, momentum 0.9, the loss weighted 0.2). Where it
departs: a gate scales a whole channel (kernel and bias, or gamma and beta) so a pruned
channel outputs 0, and BatchNorm runs in inference mode while the masks are learnt.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.config import DefenseConfig
from keras_prune_guard.defend.gates import GatedNetwork
from keras_prune_guard.model.surgery import copy_weights_by_name

#: The reference's weight of the recovery loss (its `alpha`).
RECOVERY_WEIGHT = 0.2
#: SGD momentum of unlearning and of the masks, and unlearning's weight decay and clipping.
MOMENTUM, WEIGHT_DECAY, CLIP_NORM = 0.9, 5e-4, 20.0
#: Epochs after which the unlearning rate is divided by 10.
UNLEARN_MILESTONES = (10, 20)

Data = tuple[np.ndarray, np.ndarray]


class _StopAtFloor(keras.callbacks.Callback):
    """Stops unlearning once an epoch's clean accuracy is at most `floor`."""

    def __init__(self, floor: float):
        super().__init__()
        self.floor, self.epochs, self.accuracy = floor, 0, None

    def on_epoch_end(self, epoch, logs=None):
        self.epochs, self.accuracy = epoch + 1, float((logs or {}).get("accuracy", 1.0))
        if self.accuracy <= self.floor:
            self.model.stop_training = True


@keras.saving.register_keras_serializable(package="keras_prune_guard")
def negative_cross_entropy(y_true, y_pred):
    """Unlearning's loss: minus the sparse categorical cross-entropy."""
    return -keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


def unlearn(model: keras.Model, data: Data, config: DefenseConfig) -> tuple[keras.Model, dict]:
    """A copy of `model` trained to *raise* its clean loss until its accuracy collapses.

    Args:
        model: the backdoored network B (left unchanged).
        data: clean `(x, y)` arrays.
        config: the defense's settings.

    Returns:
        `(unlearned copy, {"epochs": ..., "accuracy": ...})`, the accuracy of its last
        unlearning epoch as a fraction.
    """
    keras.utils.set_random_seed(config.seed)
    copy = keras.models.clone_model(model)
    copy_weights_by_name(model, copy)
    steps = -(-len(data[0]) // config.batch_size)
    rates = [config.unlearn_lr * 0.1 ** i for i in range(len(UNLEARN_MILESTONES) + 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [m * steps for m in UNLEARN_MILESTONES], rates)
    copy.compile(optimizer=keras.optimizers.SGD(schedule, momentum=MOMENTUM,
                                                weight_decay=WEIGHT_DECAY,
                                                global_clipnorm=CLIP_NORM),
                 loss=negative_cross_entropy, metrics=["accuracy"])
    stop = _StopAtFloor(config.unlearn_floor)
    copy.fit(data[0], data[1], batch_size=config.batch_size, epochs=config.unlearn_epochs,
             shuffle=True, callbacks=[stop], verbose=0)
    return copy, {"epochs": stop.epochs, "accuracy": stop.accuracy}


def batches(count: int, batch_size: int, rng: np.random.Generator):
    """Row indices of one shuffled epoch, batch by batch."""
    rows = rng.permutation(count)
    return [rows[i:i + batch_size] for i in range(0, count, batch_size)]


def sgd_step(value: tf.Variable, velocity: tf.Variable, grad, rate: float) -> None:
    """One SGD step with momentum (PyTorch's form), then the value clipped to [0, 1]."""
    velocity.assign(MOMENTUM * velocity + grad)
    value.assign(tf.clip_by_value(value - rate * velocity, 0.0, 1.0))


def recover_masks(unlearned: keras.Model, data: Data, config: DefenseConfig) -> np.ndarray:
    """The gate of every channel that best recovers the unlearned network's clean accuracy.

    Returns:
        The masks in [0, 1], one per gated channel (`gates.unit_names` order).
    """
    gated = GatedNetwork(unlearned)
    mask = tf.Variable(tf.ones(gated.units))
    velocity = tf.Variable(tf.zeros(gated.units))

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(mask)
            loss = RECOVERY_WEIGHT * tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, gated(x, mask)))
        sgd_step(mask, velocity, tape.gradient(loss, mask), config.mask_lr)

    rng = np.random.default_rng([config.seed, 1])
    x, y = data
    for _ in range(config.mask_epochs):
        for rows in batches(len(x), config.batch_size, rng):
            step(tf.constant(x[rows]), tf.constant(y[rows]))
    return mask.numpy()


def rnp_masks(model: keras.Model, data: Data, config: DefenseConfig, log=print
              ) -> np.ndarray:
    """RNP's mask of every gated channel of `model`, learnt on clean `data` alone.

    Args:
        model: the backdoored network B.
        data: clean `(x, y)` arrays (float32 images, integer labels).
        config: the defense's settings (`DefenseConfig`).
        log: where to say how unlearning went. Defaults to `print`.

    Returns:
        The masks in [0, 1], one per gated channel; low means "prune first".

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> from keras_prune_guard.config import DefenseConfig
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> masks = rnp_masks(deepid(num_classes=3), (x.astype("float32"), y),
    ...                   DefenseConfig(method="rnp", unlearn_epochs=1, mask_epochs=1), log=None)
    >>> masks.shape, bool(((masks >= 0) & (masks <= 1)).all())
    ((200,), True)
    """
    unlearned, how = unlearn(model, data, config)
    if log:
        log(f"RNP: unlearned B in {how['epochs']} epoch(s) on {len(data[0])} clean images "
            f"(clean accuracy {100 * how['accuracy']:.1f}%, floor "
            f"{100 * config.unlearn_floor:g}%); learning the masks ...")
    return recover_masks(unlearned, data, config)


__all__ = ["RECOVERY_WEIGHT", "batches", "negative_cross_entropy", "recover_masks", "rnp_masks",
           "sgd_step", "unlearn"]
