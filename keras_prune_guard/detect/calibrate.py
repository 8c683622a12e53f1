"""The threshold of a detector, set on held-out clean inputs for a false-alarm budget.

No triggered input is ever looked at: a defender has none. The threshold sits in the gap
between the last clean score it lets pass and the next larger one (at least `MARGIN` above
the former), so a score computed in another runtime, off by rounding, falls on the same side.
"""

from __future__ import annotations

import numpy as np

from keras_prune_guard.config import DEFAULT_FALSE_ALARM, FineTuneConfig
from keras_prune_guard.defend.choice import split_holdout

#: The smallest gap kept between the threshold and the clean score below it.
MARGIN = 1e-5


def check_false_alarm(false_alarm: float, what: str = "false_alarm") -> float:
    """Checks a false-alarm budget: a fraction in (0, 0.5]; returns it as a float.

    Example:

    >>> check_false_alarm(0.02)
    0.02
    """
    if isinstance(false_alarm, bool) or not isinstance(false_alarm, (int, float)) or not (
        0.0 < float(false_alarm) <= 0.5
    ):
        raise ValueError(f"{what} must be a fraction in (0, 0.5] (0.01 = 1% of clean inputs "
                         f"flagged). Received: {what}={false_alarm!r}")
    return float(false_alarm)


def threshold_for(clean_scores, false_alarm: float) -> float:
    """The threshold above which at most `false_alarm` of `clean_scores` lie.

    Args:
        clean_scores: detection scores of held-out clean inputs (higher = more
            suspicious), at least one, all finite.
        false_alarm: the budget, a fraction in (0, 0.5].

    Returns:
        A float `t` with `mean(clean_scores > t) <= false_alarm`, halfway into the
        gap above the last score let pass (at least `MARGIN` above it).

    Example:

    >>> threshold_for([0.0, 0.1, 0.2, 0.9], 0.25)
    0.55
    """
    false_alarm = check_false_alarm(false_alarm)
    scores = np.sort(np.asarray(clean_scores, dtype="float64").ravel())
    if not len(scores) or not np.isfinite(scores).all():
        raise ValueError(f"clean_scores must be at least one finite score. Received: "
                         f"{len(scores)} scores, {int((~np.isfinite(scores)).sum())} not finite")
    allowed = int(np.floor(false_alarm * len(scores) + 1e-9))  # clean inputs that may be flagged
    passed = scores[len(scores) - allowed - 1]  # the largest score left unflagged
    above = scores[scores > passed]
    gap_end = above[0] if len(above) else passed + 2 * MARGIN
    return float(max((passed + gap_end) / 2.0, passed + MARGIN))


def calibration_split(clean: tuple, fine_tune: FineTuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """`(pool, calibration)`: the clean images split as fine-pruning splits them.

    The calibration part is the share `fine_tune.holdout` that schedule choice holds
    out (same seed, same rows), so no B'' was trained on it; the pool is the rest
    (STRIP blends with it).

    Args:
        clean: the clean `(x, y)` arrays of the repair (its fine-tuning data, or its
            validation data when nothing is trained).
        fine_tune: the repair's `FineTuneConfig` (its `holdout` and `seed`).

    Returns:
        Two image arrays.

    Example:

    >>> x = np.zeros((10, 4, 4, 3), "float32")
    >>> [len(part) for part in calibration_split((x, np.arange(10)), FineTuneConfig())]
    [8, 2]
    """
    rest, held = split_holdout(clean, fine_tune.holdout, fine_tune.seed)
    return rest[0], held[0]


def too_few_warning(images: int, false_alarm: float) -> str | None:
    """One sentence when `images` clean images cannot pin down a `false_alarm` budget.

    Example:

    >>> too_few_warning(40, 0.01)[:40]
    'Only 40 held-out clean images set each G'
    """
    needed = int(np.ceil(1.0 / false_alarm)) * 3
    if images >= needed:
        return None
    return (f"Only {images} held-out clean images set each GoodNet's threshold for a "
            f"{false_alarm:.0%} false-alarm budget; about {needed} are needed for the false "
            "alarm on new inputs to stay near the budget, so it may be higher.")


__all__ = ["DEFAULT_FALSE_ALARM", "MARGIN", "calibration_split", "check_false_alarm",
           "threshold_for", "too_few_warning"]
