"""The defense's configuration, checked once where it is built, and the run-time options.

`PruneConfig` says *what* the defense computes (thresholds, order, which network a
threshold keeps, where the mask goes, ...): it is frozen, validated completely in its
constructor (so a bad argument fails before any data is read) and serialisable with
`get_config`/`from_config`, like a Keras schedule or TF-MOT's pruning schedule.
`FineTuneConfig` does the same for the fine-tuning that turns B' into B''.
`RunOptions` says *how* to run it (a `tf.distribute` strategy, an activation-cache folder,
verbosity): they change no figure and are not saved with the results.

`sweep`, `prune`, `PruningCallback`, `repair` and `fine_tune` take these objects; their
keyword arguments build the same objects (`options_from`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import absl.logging
import keras

from keras_prune_guard._compat import deprecated

#: Pruning orders by mean activation: least active first (the Fine-Pruning paper, the
#: public lab solutions) or most active first (the lab handout's literal words).
ORDERS = ("ascending", "descending")
#: Which network a threshold keeps: the first one at least X below the original
#: accuracy (the lab's rule), or the last one still within X.
KEEP_RULES = ("first_below", "last_within")
DEFAULT_THRESHOLDS = (2.0, 4.0, 10.0)
#: 0.1's fixed initial Adam learning rate of fine-tuning (`FineTuneConfig.learning_rate`).
DEFAULT_LEARNING_RATE = 1e-4
#: Images per training step of fine-tuning.
DEFAULT_FINE_TUNE_BATCH_SIZE = 32
#: Epochs of each fine-tuning schedule tried (0 would mean pruning only).
DEFAULT_FINE_TUNE_EPOCHS = 16
#: Learning-rate schedules fine-pruning tries, most aggressive first.
DEFAULT_SCHEDULES = ("cyclic:1e-2", "cyclic:5e-3", "cosine:1e-3")
#: Upper bounds no sane run exceeds, checked in the constructors and stated in `--help`.
MAX_BATCH_SIZE = 65536
MAX_EPOCHS = 10_000
#: The largest Adam learning rate (`learning_rate`, a schedule's peak) accepted.
MAX_LEARNING_RATE = 1.0
MAX_TIE_TOLERANCE = 0.1
MAX_SEED = 2**32 - 1
#: Learning-rate schedule shapes: `cosine` decay or one `cyclic` triangle per two epochs.
SHAPES = ("cosine", "cyclic")


def parse_schedule(spec: str, name: str = "schedules") -> tuple[str, float]:
    """Splits and checks a spec: `"cyclic:1e-2"` -> `("cyclic", 0.01)`.

    Raises:
        ValueError: not `<shape>:<peak>` with a known shape and a peak in
            (0, `MAX_LEARNING_RATE`].

    Example:

    >>> parse_schedule("cosine:3e-3")
    ('cosine', 0.003)
    """
    shape, _, peak = str(spec).partition(":") if isinstance(spec, str) else ("", "", "")
    try:
        value = float(peak)
    except ValueError:
        value = float("nan")
    if shape not in SHAPES or not (math.isfinite(value) and 0 < value <= MAX_LEARNING_RATE):
        raise ValueError(
            f"{name}: each schedule is SHAPE:PEAK with SHAPE one of {', '.join(SHAPES)} and "
            f"PEAK a learning rate in (0, {MAX_LEARNING_RATE:g}], e.g. cyclic:1e-2. "
            f"Received: {spec!r}"
        )
    return shape, value


#: Random image changes during fine-tuning: shifts of up to 6% and horizontal flips, shifts
#: only (for images a mirror changes the meaning of, such as text), or none.
AUGMENTATIONS = ("shift-flip", "shift", "none")


def check_thresholds(thresholds: Any, name: str = "thresholds") -> tuple[float, ...]:
    """Validates thresholds X (percentage points, or percent of the original accuracy).

    Args:
        thresholds: a number or a list of numbers, each > 0 and < 100.
        name: how to name the argument in messages. Defaults to "thresholds".

    Returns:
        The thresholds as floats, sorted ascending.

    Raises:
        ValueError: a string or bool, a value that is not a number, <= 0 or >= 100, an
            empty list, or a repeated value.

    Example:

    >>> check_thresholds([10, 2, 4])
    (2.0, 4.0, 10.0)
    """
    if isinstance(thresholds, (str, bytes)):
        raise ValueError(
            f"{name} takes a list of numbers, e.g. {name}=[2, 4, 10], not a string. "
            f"Received: {name}={thresholds!r}"
        )
    values = [thresholds] if isinstance(thresholds, numbers.Real) else thresholds
    try:
        values = list(values)
    except TypeError:
        raise ValueError(
            f"{name} takes a list of numbers, e.g. [2, 4, 10]. Received: {name}={thresholds!r}"
        ) from None
    out = []
    for t in values:
        if isinstance(t, (bool, str, bytes)) or not isinstance(t, numbers.Real):
            raise ValueError(
                f"{name} must be numbers between 0 and 100 (exclusive), e.g. [2, 4, 10]. "
                f"Received: {t!r} in {name}={values}"
            )
        value = float(t)
        if not math.isfinite(value) or not 0 < value < 100:
            raise ValueError(
                f"{name} must be > 0 and < 100 (percentage points of accuracy). "
                f"Received: {t!r} in {name}={values}"
            )
        out.append(value)
    if not out:
        raise ValueError(f"{name} must hold at least one value. Received: []")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat. Received: {name}={values}")
    return tuple(sorted(out))


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}. Received: {name}={value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False. Received: {name}={value!r}")


def _positive_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f">= {minimum}" + ("" if maximum is None else f" and <= {maximum:,}")
        raise ValueError(f"{name} must be an integer {bound}. Received: {name}={value!r}")


def _strict(cls):
    """Makes a config dataclass refuse unknown keywords with one line naming them.

    A plain dataclass raises `TypeError: __init__() got an unexpected keyword argument`;
    this names the class, the keyword(s) and the fields it does take.
    """
    init = cls.__init__
    known = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown = [k for k in kwargs if k not in known]
        if unknown or len(args) > len(known):
            got = ", ".join(f"{k}={kwargs[k]!r}" for k in unknown) or f"{len(args)} positional"
            raise ValueError(f"{cls.__name__}: unknown keyword argument(s) {unknown or ''}; "
                             f"expected some of {known}. Received: {got}")
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _number(name: str, value: Any, low: float, high: float, open_low: bool = False,
            open_high: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and not math.isnan(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (
            value < high if open_high else value <= high)
    if not ok:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise ValueError(f"{name} must be a number in {lo}{low:g}, {high:g}{hi}. Received: "
                         f"{name}={value!r}")


class _Serialisable:
    """`get_config`/`from_config`/`replace` shared by the frozen configurations."""

    def get_config(self) -> dict:
        """The constructor arguments as a JSON-serialisable dict."""
        config = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    @classmethod
    def from_config(cls, config: Mapping):
        """Rebuilds the object from `get_config()` (checked again; unknown keys refused)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}.from_config: unknown keys {unknown}; expected some of "
                f"{sorted(known)}"
            )
        return cls(**config)

    def replace(self, **changes):
        """A copy with `changes` applied (checked like a new object)."""
        return dataclasses.replace(self, **changes)


@_strict
@dataclass(frozen=True)
class PruneConfig(_Serialisable):
    """What the pruning defense computes, validated in the constructor.

    Args:
        thresholds: accuracy drops X that select one B' each, in percentage points
            (or, with `relative`, percent of the original accuracy). Stored sorted.
            Defaults to (2, 4, 10).
        order: "ascending" (least active channel first) or "descending". Defaults to
            "ascending".
        relative: X is a percentage of the original accuracy instead of absolute
            points. Defaults to `False`.
        keep: "first_below" (the first network at least X below the original, the
            lab's rule) or "last_within" (the last one still within X). Defaults to
            "first_below".
        after: the layer whose output channels are masked; "model/layer" for a layer
            inside a nested model. Defaults to `None` (the pooling layer feeding the
            classifier head, `pool_3` on DeepID; see `surgery.last_pooling_layer`).
        batch_size: images per forward call, at most `MAX_BATCH_SIZE`. Defaults to 1024.
        full_curve: prune every channel instead of stopping once the largest X is
            reached. Defaults to `False`.
        tie_tolerance: means closer than this share of the largest |mean| are ties,
            broken by channel index (see `rank_channels`); at most `MAX_TIE_TOLERANCE`.
            Defaults to 1e-6.

    Raises:
        ValueError: any argument out of range, naming it and the value received.

    Example:

    >>> config = PruneConfig(thresholds=[2, 4, 10], keep="last_within")
    >>> PruneConfig.from_config(config.get_config()) == config
    True
    """

    # `metadata` is what the CLI shows: `--thresholds`, `--order`, ... are built from it.
    thresholds: tuple[float, ...] = field(default=DEFAULT_THRESHOLDS, metadata={
        "help": "accuracy drops X in percentage points, one B' each"})
    order: str = field(default="ascending", metadata={
        "choices": ORDERS, "help": "pruning order by mean activation: ascending = least "
        "active first, as the Fine-Pruning paper and the public lab solutions do; "
        "descending = the handout's literal words"})
    relative: bool = field(default=False, metadata={
        "help": "X is a percentage of the original accuracy instead of absolute points"})
    keep: str = field(default="first_below", metadata={
        "choices": KEEP_RULES, "help": "which network a threshold keeps: the first at least "
        "X below the original (the lab's rule) or the last still within X"})
    after: str | None = field(default=None, metadata={
        "help": "layer whose output channels are pruned; MODEL/LAYER for a layer inside a "
        "nested model, e.g. resnet50/conv5_block3_out (default: the pooling layer feeding "
        "the classifier head: pool_3 on DeepID, avg_pool on ResNet50)"})
    batch_size: int = field(default=1024, metadata={
        "help": f"images per forward call (1 to {MAX_BATCH_SIZE})"})
    full_curve: bool = field(default=False, metadata={
        "help": "prune every channel instead of stopping after the largest threshold"})
    tie_tolerance: float = field(default=1e-6, metadata={
        "help": "channel means within this share of the largest |mean| of each other are "
        "ties, pruned in channel index order (so sums reordered across devices, which "
        "change a mean in its last bits, do not change the order); 0 to "
        f"{MAX_TIE_TOLERANCE:g}"})

    def __post_init__(self):
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        _choice("order", self.order, ORDERS)
        _choice("keep", self.keep, KEEP_RULES)
        _flag("relative", self.relative)
        _flag("full_curve", self.full_curve)
        _positive_int("batch_size", self.batch_size, maximum=MAX_BATCH_SIZE)
        object.__setattr__(self, "batch_size", int(self.batch_size))
        tol = self.tie_tolerance
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (
            math.isfinite(tol) and 0 <= tol <= MAX_TIE_TOLERANCE
        ):
            raise ValueError(f"tie_tolerance must be a finite number >= 0 and <= "
                             f"{MAX_TIE_TOLERANCE:g}. Received: tie_tolerance={tol!r}")
        object.__setattr__(self, "tie_tolerance", float(tol))
        if self.after is not None and (not isinstance(self.after, str) or not self.after):
            raise ValueError(
                f"after must be a layer name or None. Received: after={self.after!r}"
            )


@_strict
@dataclass(frozen=True)
class FineTuneConfig(_Serialisable):
    """How B' is fine-tuned into B'' (fine-pruning), validated in the constructor.

    By default the learning-rate schedule is chosen on clean data alone
    (`choice.choose_fine_tune`): `holdout` of the clean data is set aside, each of
    `schedules` (most aggressive first) trains a copy of B' on the rest, scored on the
    held-out part after each settled epoch, and the first schedule with an epoch within
    `tolerance` points of B's held-out accuracy is kept, at its latest such epoch. With
    fewer than `min_per_class` clean images per class nothing is trained and B' is kept.

    Args:
        epochs: training epochs of each schedule tried, at most `MAX_EPOCHS`; 0 means
            pruning only. Defaults to 16.
        learning_rate: `None` chooses among `schedules`; a number trains one run
            whose Adam rate decays from it to 0 along a cosine, on all the clean
            data, without holding any out (0.1's fine-tuning); at most `MAX_LEARNING_RATE`.
            Defaults to `None`.
        schedules: `SHAPE:PEAK` learning-rate schedules to try, most aggressive
            first (`schedules.parse_schedule`; peaks at most `MAX_LEARNING_RATE`, no
            schedule twice). Defaults to `DEFAULT_SCHEDULES`.
        holdout: share of the clean data held out to choose. Defaults to 0.2.
        tolerance: the largest drop of held-out accuracy below B's accepted, in
            points. Defaults to 3.
        min_per_class: clean images per class needed to hold some out and decide.
            Defaults to 3.
        augment: random image changes while training, one of `AUGMENTATIONS`:
            "shift-flip" (shifts of up to 6% and horizontal flips), "shift" or
            "none". Defaults to "shift-flip".
        batch_size: images per training step, at most `MAX_BATCH_SIZE`. Defaults to 32.
        seed: random seed of the hold-out split, shuffling and dropout, in
            [0, `MAX_SEED`]. Defaults to 0.

    Example:

    >>> FineTuneConfig(epochs=5, learning_rate=1e-2).get_config()["epochs"]
    5
    """

    epochs: int = field(default=DEFAULT_FINE_TUNE_EPOCHS, metadata={
        "cli": "--fine-tune-epochs", "metavar": "E", "help": "fine-pruning: train copies of "
        "each B' for E epochs on clean data with the pruned channels kept at zero, giving "
        "B'' (written as bprime_ft_X{X}.keras/.h5, its GoodNet as goodnet_ft_X{X}/ and "
        f".keras, and reported next to B'). 0 = pruning only; at most {MAX_EPOCHS:,}"})
    learning_rate: float | None = field(default=None, metadata={
        "cli": "--fine-tune-lr", "metavar": "LR", "help": "one fixed initial Adam learning "
        "rate, cosine-decayed to 0, on all the clean data, instead of choosing a schedule "
        f"on held-out clean data; at most {MAX_LEARNING_RATE:g}"})
    schedules: tuple[str, ...] = field(default=DEFAULT_SCHEDULES, metadata={
        "cli": "--fine-tune-schedules", "metavar": "SHAPE:PEAK", "help": "learning-rate "
        "schedules tried, most aggressive first (cosine or cyclic, peak Adam rate); the "
        "first whose held-out clean accuracy is within --fine-tune-tolerance of B's is kept; "
        f"peaks at most {MAX_LEARNING_RATE:g}, each schedule once"})
    holdout: float = field(default=0.2, metadata={
        "cli": "--fine-tune-holdout", "help": "share of the clean data held out to choose "
        "the schedule and its epoch"})
    tolerance: float = field(default=3.0, metadata={
        "cli": "--fine-tune-tolerance", "help": "largest drop of held-out clean accuracy "
        "below B's accepted, in points"})
    min_per_class: float = field(default=3.0, metadata={
        "cli": "--fine-tune-min-per-class", "help": "clean images per class needed to "
        "choose; with fewer, B' is kept"})
    augment: str = field(default="shift-flip", metadata={
        "cli": "--fine-tune-augment", "choices": AUGMENTATIONS, "help": "random image changes "
        "while fine-tuning: shifts of up to 6%% and horizontal flips, shifts only (images a "
        "mirror changes, such as text), or none"})
    batch_size: int = field(default=DEFAULT_FINE_TUNE_BATCH_SIZE, metadata={
        "cli": "--fine-tune-batch-size",
        "help": f"images per fine-tuning step (1 to {MAX_BATCH_SIZE})"})
    seed: int = field(default=0, metadata={
        "cli": "--fine-tune-seed", "help": "random seed of the hold-out split and shuffling "
        f"(0 to {MAX_SEED})"})

    def __post_init__(self):

        _positive_int("epochs", self.epochs, minimum=0, maximum=MAX_EPOCHS)
        lr = self.learning_rate
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (
            math.isfinite(lr) and 0 < lr <= MAX_LEARNING_RATE
        )):
            raise ValueError(f"learning_rate must be > 0 and <= {MAX_LEARNING_RATE:g} (a finite "
                             f"number) or None. Received: learning_rate={lr!r}")
        if isinstance(self.schedules, str) or not self.schedules:
            raise ValueError("schedules must be a non-empty list such as ['cyclic:1e-2', "
                             f"'cosine:1e-3']. Received: schedules={self.schedules!r}")
        object.__setattr__(self, "schedules", tuple(self.schedules))
        seen = {}
        for spec in self.schedules:
            parsed = parse_schedule(spec)
            if parsed in seen:
                raise ValueError(f"schedules must not repeat: {spec!r} is {seen[parsed]!r} "
                                 f"({parsed[0]} with peak {parsed[1]:g}). Received: "
                                 f"schedules={list(self.schedules)}")
            seen[parsed] = spec
        _number("holdout", self.holdout, 0.0, 1.0, open_low=True, open_high=True)
        _number("tolerance", self.tolerance, 0.0, 100.0)
        _number("min_per_class", self.min_per_class, 0.0, float("inf"))
        _choice("augment", self.augment, AUGMENTATIONS)
        _positive_int("batch_size", self.batch_size, maximum=MAX_BATCH_SIZE)
        _positive_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        for name in ("epochs", "batch_size", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("holdout", "tolerance", "min_per_class"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if lr is not None:
            object.__setattr__(self, "learning_rate", float(lr))


@_strict
@dataclass(frozen=True)
class RunOptions:
    """How to run the defense; changes no result and is not saved with one.

    Args:
        strategy: a `tf.distribute` strategy for the passes over the data (ranking,
            sweep, evaluation); results equal the single-device run. Defaults to `None`.
        activation_cache: a folder for the sweep's activation cache as a memory-mapped
            file (deleted afterwards) instead of RAM. Defaults to `None`.
        verbose: 0 prints nothing, 1 prints progress lines. Defaults to 1.

    Example:

    >>> import tensorflow as tf
    >>> strategy = tf.distribute.MirroredStrategy(["/cpu:0"])  # e.g. MirroredStrategy(): all GPUs
    >>> run = RunOptions(strategy=strategy, verbose=0)
    >>> run.strategy.num_replicas_in_sync, run.activation_cache
    (1, None)
    """

    strategy: Any = None
    activation_cache: str | os.PathLike | None = None
    verbose: int = 1

    def __post_init__(self):
        _positive_int("verbose", self.verbose, minimum=0)
        if self.strategy is not None and not hasattr(self.strategy, "scope"):
            raise ValueError("strategy must be a tf.distribute.Strategy or None. Received: "
                             f"strategy={self.strategy!r}")
        cache = self.activation_cache
        if cache is not None and not isinstance(cache, (str, os.PathLike)):
            raise ValueError("activation_cache must be a folder path or None. Received: "
                             f"activation_cache={cache!r}")

    def log(self, message: str) -> None:
        """Prints `message` when `verbose` (through absl when Keras logs non-interactively)."""
        if not self.verbose:
            return

        if keras.config.is_interactive_logging_enabled():
            print(message, flush=True)
        else:

            absl.logging.info(message)


#: Detection scores a GoodNet can threshold, the default first (`detect.scores.SCORES`
#: holds the functions; docs/detection.md says why the default).
DETECTION_SCORES = ("confidence_drop", "kl", "disagreement")
#: The clean false-alarm budget `repair` calibrates GoodNets at (STRIP's paper sets 1%).
DEFAULT_FALSE_ALARM = 0.01
MAX_STRIP_BLENDS = 1024


@_strict
@dataclass(frozen=True)
class DetectConfig(_Serialisable):
    """How `repair` turns each GoodNet into a detector with a false-alarm budget.

    The threshold of each GoodNet's `score` is set on held-out clean images alone
    (the part of the clean data fine-tuning held out, or the validation images when
    nothing is trained) so that at most `false_alarm` of them are flagged. With `strip`,
    STRIP runs beside it on B, on the same clean images and budget.

    Args:
        false_alarm: the clean false-alarm budget, a fraction in (0, 0.5]; 0 keeps
            0.2's rule (flag where B and B' disagree, no threshold). Defaults to 0.01.
        score: the GoodNet's detection score, one of `DETECTION_SCORES`. Defaults
            to "confidence_drop".
        strip: also run STRIP on B and report it beside the GoodNets (it costs
            `strip_blends` forward passes per scored image; `benchmark` always runs
            it). Defaults to `False`.
        strip_blends: clean images each input is blended with (STRIP's N), 1 to
            `MAX_STRIP_BLENDS`. Defaults to 64.
        strip_alpha: the input's weight in each blend, in (0, 1). Defaults to 0.5.

    Example:

    >>> DetectConfig(false_alarm=0.02).score
    'confidence_drop'
    """

    false_alarm: float = field(default=DEFAULT_FALSE_ALARM, metadata={
        "help": "clean false-alarm budget of each GoodNet, a fraction: its threshold is set "
        "on held-out clean images so that at most this share of them is flagged (0 = 0.2's "
        "rule: flag where B and B' disagree); at most 0.5"})
    score: str = field(default=DETECTION_SCORES[0], metadata={
        "choices": DETECTION_SCORES, "help": "the GoodNet's detection score: B's confidence "
        "in its class minus B''s probability of it, KL(B || B'), or plain disagreement"})
    strip: bool = field(default=False, metadata={"negatable": True,
        "help": "also run STRIP on B at the same budget and report it beside the GoodNets "
        "(64 forward passes per scored image; `benchmark` always runs it)"})
    strip_blends: int = field(default=64, metadata={
        "help": f"STRIP: clean images each input is blended with (1 to {MAX_STRIP_BLENDS})"})
    strip_alpha: float = field(default=0.5, metadata={
        "help": "STRIP: the input's weight in each blend, in (0, 1)"})

    def __post_init__(self):
        _number("false_alarm", self.false_alarm, 0.0, 0.5)
        _choice("score", self.score, DETECTION_SCORES)
        _flag("strip", self.strip)
        _positive_int("strip_blends", self.strip_blends, maximum=MAX_STRIP_BLENDS)
        _number("strip_alpha", self.strip_alpha, 0.0, 1.0, open_low=True, open_high=True)
        object.__setattr__(self, "false_alarm", float(self.false_alarm))
        object.__setattr__(self, "strip_alpha", float(self.strip_alpha))
        object.__setattr__(self, "strip_blends", int(self.strip_blends))

    @property
    def calibrated(self) -> bool:
        """True when GoodNets get a threshold (`false_alarm` > 0)."""
        return self.false_alarm > 0


#: What ranks the channels that are pruned, the default first: "pruning" (the lab's mean
#: activation after the last pooling layer), "rnp" (Li et al. 2023) and "anp" (Wu & Wang
#: 2021), which learn a gate per channel of every conv/BatchNorm layer (`defend.gates`).
DEFENSES = ("pruning", "rnp", "anp")


@_strict
@dataclass(frozen=True)
class DefenseConfig(_Serialisable):
    """Which channels `repair` prunes, and the settings of the mask-learning defenses.

    "pruning" ranks the channels after the last pooling layer by mean clean activation
    (the lab's defense). "rnp" and "anp" learn a mask in [0, 1] per channel of every conv
    and BatchNorm layer on the clean data (never on triggered images) and rank the
    channels by it, lowest first; the sweep then prunes in that order until the clean
    accuracy is X points below B's, as for "pruning". The defaults are the reference
    code's (bboylyg/RNP, csdongxian/ANP_backdoor); docs/defenses.md says where this
    departs from it.

    Args:
        method: one of `DEFENSES`. Defaults to "pruning".
        batch_size: images per step of unlearning and mask learning. Defaults to 128.
        unlearn_lr: RNP: SGD rate of the unlearning (gradient ascent on the clean loss).
            Defaults to 0.01.
        unlearn_epochs: RNP: most epochs of unlearning. Defaults to 20.
        unlearn_floor: RNP: unlearning stops once an epoch's clean accuracy is at most
            this fraction. Defaults to 0.2.
        mask_lr: RNP and ANP: SGD rate (momentum 0.9) of the masks. Defaults to 0.2.
        mask_epochs: RNP: epochs of mask learning on the unlearned network. Defaults to 20.
        anp_steps: ANP: mask updates (each on one batch). Defaults to 2000.
        anp_eps: ANP: bound of the neuron perturbation. Defaults to 0.4.
        anp_alpha: ANP: weight of the clean loss against the perturbed one. Defaults to 0.2.
        seed: seeds the batches and ANP's random start. Defaults to 0.

    Example:

    >>> DefenseConfig(method="rnp").unlearn_floor
    0.2
    """

    method: str = field(default=DEFENSES[0], metadata={
        "cli": "--defense", "choices": DEFENSES, "help": "what ranks the channels to prune: "
        "mean activation after the last pooling layer (the lab's), or a mask learnt per "
        "channel of every conv/BatchNorm layer by RNP or ANP"})
    batch_size: int = field(default=128, metadata={
        "cli": "--defense-batch-size", "help": "rnp/anp: images per step"})
    unlearn_lr: float = field(default=0.01, metadata={
        "help": "rnp: SGD rate of unlearning (gradient ascent on the clean loss)"})
    unlearn_epochs: int = field(default=20, metadata={"help": "rnp: most unlearning epochs"})
    unlearn_floor: float = field(default=0.2, metadata={
        "help": "rnp: unlearning stops at this clean accuracy (a fraction)"})
    mask_lr: float = field(default=0.2, metadata={"help": "rnp/anp: SGD rate of the masks"})
    mask_epochs: int = field(default=20, metadata={
        "help": "rnp: epochs of mask learning on the unlearned network"})
    anp_steps: int = field(default=2000, metadata={"help": "anp: mask updates"})
    anp_eps: float = field(default=0.4, metadata={"help": "anp: neuron perturbation bound"})
    anp_alpha: float = field(default=0.2, metadata={
        "help": "anp: weight of the clean loss against the perturbed loss, in [0, 1]"})
    seed: int = field(default=0, metadata={"cli": "--defense-seed",
                                           "help": "rnp/anp: seed of batches and noise"})

    def __post_init__(self):
        _choice("method", self.method, DEFENSES)
        _positive_int("batch_size", self.batch_size, maximum=MAX_BATCH_SIZE)
        _number("unlearn_lr", self.unlearn_lr, 0.0, MAX_LEARNING_RATE, open_low=True)
        _positive_int("unlearn_epochs", self.unlearn_epochs, maximum=MAX_EPOCHS)
        _number("unlearn_floor", self.unlearn_floor, 0.0, 1.0)
        _number("mask_lr", self.mask_lr, 0.0, 10.0, open_low=True)
        _positive_int("mask_epochs", self.mask_epochs, maximum=MAX_EPOCHS)
        _positive_int("anp_steps", self.anp_steps, maximum=1_000_000)
        _number("anp_eps", self.anp_eps, 0.0, 1.0)
        _number("anp_alpha", self.anp_alpha, 0.0, 1.0)
        _positive_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        for name in ("unlearn_lr", "unlearn_floor", "mask_lr", "anp_eps", "anp_alpha"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def learns_masks(self) -> bool:
        """True for the defenses that learn a gate per channel ("rnp", "anp")."""
        return self.method != "pruning"


_PRUNE_KEYS = {f.name for f in dataclasses.fields(PruneConfig)}
_RUN_KEYS = {f.name for f in dataclasses.fields(RunOptions)}


def options_from(
    config: PruneConfig | None,
    run: RunOptions | None,
    kwargs: dict,
    where: str,
) -> tuple[PruneConfig, RunOptions]:
    """Builds the configuration and run options from objects and/or keyword arguments.

    Keyword arguments are a convenience: they override fields of `config` / `run`
    (0.1 spellings such as `cache_dir` are accepted with a `DeprecationWarning`).

    Args:
        config: a `PruneConfig` or `None` (the defaults).
        run: a `RunOptions` or `None` (the defaults).
        kwargs: the remaining keyword arguments of the caller.
        where: the caller's name, for messages.

    Returns:
        `(config, run)`.

    Raises:
        ValueError: an unknown keyword, or a bad value (from the constructors).
    """
    if config is not None and not isinstance(config, PruneConfig):
        raise ValueError(f"{where}: config must be a PruneConfig. Received: {config!r}")
    if run is not None and not isinstance(run, RunOptions):
        raise ValueError(f"{where}: run must be a RunOptions. Received: {run!r}")
    kwargs = dict(kwargs)
    if "cache_dir" in kwargs:
        deprecated(f"{where}(cache_dir=...)", f"{where}(activation_cache=...)", stacklevel=4)
        kwargs["activation_cache"] = kwargs.pop("cache_dir")
    unknown = sorted(set(kwargs) - _PRUNE_KEYS - _RUN_KEYS)
    if unknown:
        raise ValueError(
            f"{where}() got unknown keyword argument(s) {unknown}; expected PruneConfig "
            f"fields {sorted(_PRUNE_KEYS)} or RunOptions fields {sorted(_RUN_KEYS)}"
        )
    prune = {k: v for k, v in kwargs.items() if k in _PRUNE_KEYS}
    runs = {k: v for k, v in kwargs.items() if k in _RUN_KEYS}
    config = (config or PruneConfig()).replace(**prune) if prune else (config or PruneConfig())
    run = dataclasses.replace(run or RunOptions(), **runs) if runs else (run or RunOptions())
    return config, run


__all__ = [
    "DEFENSES",
    "DefenseConfig",
    "DEFAULT_FALSE_ALARM",
    "DETECTION_SCORES",
    "DetectConfig",
    "MAX_STRIP_BLENDS",
    "SHAPES",
    "parse_schedule",
    "AUGMENTATIONS",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_THRESHOLDS",
    "FineTuneConfig",
    "KEEP_RULES",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_LEARNING_RATE",
    "MAX_SEED",
    "MAX_TIE_TOLERANCE",
    "ORDERS",
    "PruneConfig",
    "RunOptions",
    "check_thresholds",
    "options_from",
]
