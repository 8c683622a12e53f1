"""ANP, Adversarial Neuron Pruning (Wu & Wang 2021): learn per-channel masks while the
channels are adversarially perturbed; the backdoor's channels are the fragile ones.

Follows the reference code (csdongxian/ANP_backdoor `optimize_mask_cifar.py`): each step
draws the perturbation uniformly in [-eps, eps], takes one signed-gradient step of size
eps that raises the clean loss (clipped to [-eps, eps]), then moves the masks (SGD 0.2,
momentum 0.9, clipped to [0, 1]) on alpha * clean loss + (1 - alpha) * perturbed loss,
eps 0.4, alpha 0.2, 2000 steps of 128 images. Networks without BatchNorm (DeepID) get the
perturbation on their convolution channels, as the ANP authors suggest. Where it departs:
a gate scales a whole channel (kernel and bias, or gamma and beta), and BatchNorm runs in
inference mode.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_prune_guard.config import DefenseConfig
from keras_prune_guard.defend.gates import GatedNetwork
from keras_prune_guard.defend.rnp import batches, sgd_step

Data = tuple[np.ndarray, np.ndarray]


def _loss(y, probabilities):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))


def anp_masks(model: keras.Model, data: Data, config: DefenseConfig, log=print
              ) -> np.ndarray:
    """ANP's mask of every gated channel of `model`, learnt on clean `data` alone.

    Args:
        model: the backdoored network B (left unchanged).
        data: clean `(x, y)` arrays (float32 images, integer labels).
        config: the defense's settings (`DefenseConfig`).
        log: where to say what runs. Defaults to `print`.

    Returns:
        The masks in [0, 1], one per gated channel; low means "prune first".

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid
    >>> from keras_prune_guard.config import DefenseConfig
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> masks = anp_masks(deepid(num_classes=3), (x.astype("float32"), y),
    ...                   DefenseConfig(method="anp", anp_steps=2), log=None)
    >>> masks.shape
    (200,)
    """
    gated = GatedNetwork(model)
    units, eps, alpha = gated.units, config.anp_eps, config.anp_alpha
    mask = tf.Variable(tf.ones(units))
    velocity = tf.Variable(tf.zeros(units))

    @tf.function(reduce_retracing=True)
    def step(x, y, scale_noise, shift_noise):
        if eps > 0:
            with tf.GradientTape() as tape:
                tape.watch([scale_noise, shift_noise])
                raised = _loss(y, gated(x, mask, scale_noise, shift_noise))
            up = tape.gradient(raised, [scale_noise, shift_noise])
            scale_noise = tf.clip_by_value(scale_noise + eps * tf.sign(up[0]), -eps, eps)
            shift_noise = tf.clip_by_value(shift_noise + eps * tf.sign(up[1]), -eps, eps)
        with tf.GradientTape() as tape:
            tape.watch(mask)
            loss = alpha * _loss(y, gated(x, mask))
            if eps > 0:
                loss += (1 - alpha) * _loss(y, gated(x, mask, scale_noise, shift_noise))
        sgd_step(mask, velocity, tape.gradient(loss, mask), config.mask_lr)

    rng = np.random.default_rng([config.seed, 2])
    x, y = data
    if log:
        log(f"ANP: learning the masks of {units} channels under perturbation (eps {eps:g}) "
            f"for {config.anp_steps} steps on {len(x)} clean images ...")
    done = 0
    while done < config.anp_steps:
        for rows in batches(len(x), config.batch_size, rng):
            noise = rng.uniform(-eps, eps, (2, units)).astype("float32")
            step(tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(noise[0]),
                 tf.constant(noise[1]))
            done += 1
            if done == config.anp_steps:
                break
    return mask.numpy()


__all__ = ["anp_masks"]
