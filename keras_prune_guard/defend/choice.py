"""Fine-pruning whose schedule is chosen on clean data alone.

A defender has no triggered images, so nothing here looks at attack success. Part of
the clean data is held out; each schedule (most aggressive first) trains a copy of B'
on the rest, scored on the held-out part after each settled epoch (`schedules.settled`);
the first schedule with an epoch whose held-out accuracy is within the tolerance of B's
is chosen, at its latest such epoch. Large, cyclic rates and longer training are what
erase backdoors (Sha et al. 2022); the held-out accuracy says when they start to wreck
the network. When no schedule is within the tolerance, the best held-out epoch of all
is kept if it beats B'. Too little clean data to hold any out: B' is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from keras_prune_guard.config import FineTuneConfig
from keras_prune_guard.defend.schedules import settled
from keras_prune_guard.defend.train import Data, check_data, train_copy
from keras_prune_guard.results import Candidate, FineTuneChoice


@dataclass
class Chosen:
    """What `choose_fine_tune` returns: the network to use (B'' or B') and why."""

    model: keras.Model
    choice: FineTuneChoice


def split_holdout(data: Data, share: float, seed: int) -> tuple[Data, Data]:
    """A seeded split of `(x, y)` into `(train, holdout)`, `share` of the rows held out.

    Example:

    >>> import numpy as np
    >>> train, held = split_holdout((np.arange(10), np.arange(10) % 2), 0.2, seed=0)
    >>> len(train[0]), len(held[0])
    (8, 2)
    """
    x, y = data
    rows = np.random.default_rng([int(seed), 7]).permutation(len(x))
    cut = max(1, int(round(share * len(x))))
    held, kept = np.sort(rows[:cut]), np.sort(rows[cut:])
    return (x[kept], y[kept]), (x[held], y[held])


def accuracy(model: keras.Model, data: Data) -> float:
    """Share of `(x, y)` classified right, in percent."""
    x, y = data
    pred = np.argmax(model.predict(x, batch_size=512, verbose=0), axis=-1)
    return float(np.mean(pred == y) * 100.0)


class _Epochs(keras.callbacks.Callback):
    """Scores the held-out data after every settled epoch; at the end restores the latest
    epoch at or above `floor` (the most trained one the clean data accept), else the best.

    Only those two epochs' weights are kept in memory.
    """

    def __init__(self, holdout: Data, spec: str, epochs: int, floor: float):
        super().__init__()
        self.holdout, self.spec, self.epochs, self.floor = holdout, spec, epochs, floor
        self.scores: dict[int, float] = {}
        self._latest = self._best = None  # (epoch, weights)

    def on_epoch_end(self, epoch, logs=None):
        if not settled(self.spec, epoch + 1, self.epochs):
            return
        score = self.scores[epoch + 1] = accuracy(self.model, self.holdout)
        if score >= self.floor:
            self._latest = (epoch + 1, self.model.get_weights())
        if self._best is None or score >= self.scores[self._best[0]]:
            self._best = (epoch + 1, self.model.get_weights())

    @property
    def chosen(self) -> int:
        return (self._latest or self._best)[0]

    def on_train_end(self, logs=None):
        self.model.set_weights((self._latest or self._best)[1])
        self._latest = self._best = (self.chosen, None)


def _reason_too_small(images: int, classes: int, config: FineTuneConfig) -> str | None:
    if images >= config.min_per_class * classes:
        return None
    return (f"{images} clean images for {classes} classes ({images / classes:.2f} per class, "
            f"fewer than min_per_class={config.min_per_class:g}): too few to hold some out "
            "and tell a good schedule from one that wrecks the network; kept B'")


def choose_fine_tune(
    b_prime: keras.Model,
    data,
    config: FineTuneConfig | None = None,
    *,
    original: keras.Model | None = None,
    log: Callable[[str], None] | None = None,
) -> Chosen:
    """Fine-prunes B' with the most aggressive schedule the held-out clean data accept.

    Args:
        b_prime: the pruned network B' (holding one `ChannelMask`).
        data: clean labelled `(x, y)` arrays (never triggered images).
        config: `FineTuneConfig` (epochs, schedules, holdout, tolerance,
            min_per_class, batch size, seed). Defaults to `FineTuneConfig()`.
        original: B; its held-out accuracy is the reference of the tolerance.
            Defaults to `None` (B''s own held-out accuracy is the reference).
        log: optional progress printer.

    Returns:
        `Chosen(model, choice)`: B'' at the chosen schedule's chosen epoch (or B'
        itself when nothing was accepted or the data are too small), and the
        `FineTuneChoice` saying what was tried and why.

    Example:

    >>> import numpy as np
    >>> from keras_prune_guard import deepid, insert_channel_mask
    >>> x, y = np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 3
    >>> b_prime = insert_channel_mask(deepid(num_classes=3), pruned_channels=[0, 5])
    >>> chosen = choose_fine_tune(b_prime, (x, y))  # e.g. original=B; 8 images: no training
    >>> chosen.model is b_prime, chosen.choice.schedule
    (True, None)
    >>> print(chosen.choice.reason)
    8 clean images for 3 classes (2.67 per class, fewer than min_per_class=3): too few ...
    """
    config = config or FineTuneConfig()
    say = log or (lambda _m: None)
    x, y = check_data(b_prime, data, "fine-tuning data")
    classes = int(b_prime.output_shape[-1])
    too_small = _reason_too_small(len(x), classes, config)
    choice = FineTuneChoice(schedule=None, epoch=None, reason=too_small or "",
                            images=len(x), holdout_images=0, tolerance=config.tolerance)
    if too_small:
        say(f"fine-pruning: {too_small}")
        return Chosen(b_prime, choice)
    train, holdout = split_holdout((x, y), config.holdout, config.seed)
    choice.holdout_images = len(holdout[0])
    choice.pruned_accuracy = accuracy(b_prime, holdout)
    choice.reference_accuracy = (choice.pruned_accuracy if original is None
                                 else accuracy(original, holdout))
    floor = choice.reference_accuracy - config.tolerance
    best = None
    for spec in config.schedules:
        watch = _Epochs(holdout, spec, config.epochs, floor)
        model = train_copy(b_prime, train, config, spec, callbacks=[watch])
        score = watch.scores[watch.chosen]
        tried = Candidate(schedule=spec, epoch=watch.chosen, holdout_accuracy=score,
                          accepted=score >= floor, epoch_accuracy=dict(watch.scores))
        choice.candidates.append(tried)
        say(f"fine-pruning: {spec}: held-out accuracy {tried.holdout_accuracy:.2f}% at epoch "
            f"{tried.epoch}/{config.epochs} (accepted from {floor:.2f}%)")
        if best is None or tried.holdout_accuracy > best[0].holdout_accuracy:
            best = (tried, model)
        if tried.accepted:
            return Chosen(model, _chose(choice, tried, "the most aggressive schedule whose "
                                        "held-out accuracy is within the tolerance"))
    return _fallback(b_prime, choice, *best)


def _fallback(b_prime, choice: FineTuneChoice, best: Candidate, model) -> Chosen:
    """No schedule within the tolerance: the best held-out epoch if it beats B', else B'."""
    if best.holdout_accuracy > choice.pruned_accuracy:
        return Chosen(model, _chose(choice, best, "no schedule was within the tolerance; "
                                    "kept the best held-out accuracy, above B''s"))
    choice.reason = "no schedule was within the tolerance nor above B''s held-out accuracy; " \
        "kept B'"
    return Chosen(b_prime, choice)


def _chose(choice: FineTuneChoice, tried: Candidate, why: str) -> FineTuneChoice:
    choice.schedule, choice.epoch, choice.reason = tried.schedule, tried.epoch, why
    return choice


__all__ = ["Chosen", "accuracy", "choose_fine_tune", "split_holdout"]
