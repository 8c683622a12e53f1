"""Learning-rate schedules of fine-pruning, named by short specs such as "cyclic:1e-2".

A spec is `<shape>:<peak>`: `cosine` decays from the peak to 0 along a cosine over all
steps; `cyclic` rises from peak/25 to the peak and falls back every `CYCLE_EPOCHS`
epochs (triangular cycles, Smith 2017), so the network is settled at each cycle's end,
where fine-pruning scores it. Large and cyclic rates are what erase backdoors in
fine-tuning (Sha et al. 2022).
"""

from __future__ import annotations

import keras

# Schedules are options: their spelling (SHAPES, parse_schedule) is checked with the options.
from keras_prune_guard.config import SHAPES, parse_schedule  # noqa: F401 (re-exported)

#: Epochs of one triangular cycle of a `cyclic` schedule.
CYCLE_EPOCHS = 2
_FLOOR = 1.0 / 25.0


@keras.saving.register_keras_serializable(package="keras_prune_guard")
class CyclicSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Triangular cycles between `peak / 25` and `peak`, `cycle_steps` steps each.

    Args:
        peak: the largest learning rate.
        cycle_steps: the steps of one rise and fall.

    Example:

    >>> schedule = CyclicSchedule(1e-2, 100)
    >>> [round(float(schedule(step)), 6) for step in (0, 50, 100, 150)]
    [0.0004, 0.01, 0.0004, 0.01]
    """

    def __init__(self, peak: float, cycle_steps: int):
        self.peak, self.cycle_steps = float(peak), max(int(cycle_steps), 1)

    def __call__(self, step):
        position = keras.ops.cast(step, "float32") / self.cycle_steps
        phase = position - keras.ops.floor(position)
        rise = 1.0 - keras.ops.abs(2.0 * phase - 1.0)  # 0 -> 1 -> 0 within a cycle
        return self.peak * (_FLOOR + (1.0 - _FLOOR) * rise)

    def get_config(self) -> dict:
        return {"peak": self.peak, "cycle_steps": self.cycle_steps}


def build_schedule(spec: str, epochs: int, epoch_steps: int):
    """The schedule of `spec` over `epochs` epochs of `epoch_steps` training steps.

    Example:

    >>> schedule = build_schedule("cosine:1e-3", 10, 45)  # 10 epochs of 45 steps
    >>> [round(float(schedule(step)), 6) for step in (0, 225, 450)]
    [0.001, 0.0005, 0.0]
    >>> build_schedule("cyclic:1e-2", 10, 45).cycle_steps  # CYCLE_EPOCHS epochs per cycle
    90
    """
    shape, peak = parse_schedule(spec)
    if shape == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, max(epochs * epoch_steps, 1))
    return CyclicSchedule(peak, CYCLE_EPOCHS * epoch_steps)


def settled(spec: str, epoch: int, epochs: int) -> bool:
    """Whether the network is settled after `epoch` (1-based): a cycle's end, or any
    epoch of a cosine schedule; the last epoch always counts.

    Example:

    >>> [e for e in range(1, 8) if settled("cyclic:1e-2", e, 7)]
    [2, 4, 6, 7]
    """
    return parse_schedule(spec)[0] == "cosine" or epoch % CYCLE_EPOCHS == 0 or epoch == epochs


__all__ = ["CYCLE_EPOCHS", "SHAPES", "CyclicSchedule", "build_schedule", "parse_schedule",
           "settled"]
