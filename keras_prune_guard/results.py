"""Typed results: what a sweep, an evaluation and a repair return, and report.json holds.

Every accuracy-like figure is a percentage (0..100) and `None` where it was not measured;
`fraction_pruned` is a fraction (0..1) of the masked layer's channels. `to_dict()` gives
the JSON form (report.json is `RepairResult.to_dict()`), `from_dict()` reads it back and
checks every field, naming the one that is wrong (`ReportError`, a `ValueError`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_prune_guard.config import DefenseConfig, DetectConfig, FineTuneConfig, PruneConfig


class ReportError(ValueError):
    """A result (or report.json), image or figure argument the report cannot use."""


class _Renamed:
    """A 0.1 attribute name that reads its 0.2 field, with a `DeprecationWarning`."""

    def __init__(self, new: str):
        self.new = new

    def __set_name__(self, owner, name):
        self.old = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        warnings.warn(
            f"`{owner.__name__}.{self.old}` is deprecated since keras-prune-guard 0.2; use "
            f"`{owner.__name__}.{self.new}` instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        value = obj
        for part in self.new.split("."):
            value = getattr(value, part)
        return value


class _Record:
    """`to_dict` and the 0.1 dict-style access (`point["valid_accuracy"]`, deprecated)."""

    _OLD_KEYS: dict[str, str] = {}

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def __getitem__(self, key: str):
        name = self._OLD_KEYS.get(key, key)
        warnings.warn(
            f"{type(self).__name__}[{key!r}] is deprecated since keras-prune-guard 0.2; use "
            f"the attribute `.{name}` instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, name)

    def get(self, key: str, default=None):
        try:
            return self[key]
        except AttributeError:
            return default


def _plain(value: Any) -> Any:
    """JSON-ready copy: tuples to lists, numpy scalars/arrays to Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class Scores(_Record):
    """Scores of one model on clean test data and poisoned data, in percent.

    `test_accuracy`: clean images given their true class; `attack_success`: poisoned
    images given the attacker's target; `detection_rate` / `false_alarm_rate` (GoodNets
    only): poisoned / clean images flagged as class N; `robust_accuracy` (R-Acc, when
    the poisoned images' true classes are known): poisoned images given their true class.
    """

    test_accuracy: float | None = None
    attack_success: float | None = None
    detection_rate: float | None = None
    false_alarm_rate: float | None = None
    robust_accuracy: float | None = None


@dataclass
class Detection(_Record):
    """A detector's figures: its threshold, set on held-out clean images for a budget, and
    what it flags on the clean test images and the triggered ones, with its ROC curve.

    `method` is "goodnet" (score `score` of B and B'/B'') or "strip" (on B).
    `false_alarm` is the budget (a fraction); the rates are percentages:
    `false_alarm_rate` of the clean test images flagged at `threshold`,
    `detection_rate` of all triggered images, `detection_rate_fooled` of the triggered
    images B gives the attacker's target (None when it gives none). `auroc` is the area
    under `roc` (a fraction, 0.5 = chance) and `detection_at_1` / `detection_at_5` the
    detection at 1% / 5% clean false alarm on the test images (each at its own threshold,
    which a defender could not set: the calibrated figures are the deployable ones).
    """

    method: str
    score: str
    false_alarm: float
    threshold: float
    calibration_images: int
    false_alarm_rate: float | None = None
    detection_rate: float | None = None
    detection_rate_fooled: float | None = None
    auroc: float | None = None
    detection_at_1: float | None = None
    detection_at_5: float | None = None
    roc: list[list[float]] = field(default_factory=list, repr=False)


@dataclass
class CurvePoint(_Record):
    """The network with the first `num_pruned` channels of the ranking pruned."""

    _OLD_KEYS = {"channels_pruned": "num_pruned"}

    step: int
    channel: int | None
    num_pruned: int
    fraction_pruned: float
    valid_accuracy: float
    attack_success: float | None = None

    channels_pruned = _Renamed("num_pruned")


@dataclass
class Snapshot(_Record):
    """What threshold X selected: `pruned_channels` (in pruning order), their accuracy."""

    _OLD_KEYS = {"channels_pruned": "num_pruned"}

    threshold: float
    reached: bool
    num_pruned: int
    fraction_pruned: float
    pruned_channels: list[int]
    valid_accuracy: float
    attack_success: float | None = None

    channels_pruned = _Renamed("num_pruned")


@dataclass
class SweepResult(_Record):
    """The accuracy curve of a sweep and the snapshot chosen for each threshold.

    `channel_order` lists the channels in pruning order, `channel_means` the mean
    activation of each channel; `curve[k]` is the network with the first k channels of
    `channel_order` pruned (`curve[0]` is the original). `predictions[k]` (when
    recorded) holds every validation image's class at step k. `stats` tells how much
    work the sweep did (`image_steps`, `images`, `activation_bytes_per_image`,
    `activation_cache`).
    """

    config: PruneConfig
    layer: str
    channels: int
    channel_order: list[int]
    channel_means: list[float]
    baseline_valid_accuracy: float
    baseline_attack_success: float | None
    curve: list[CurvePoint] = field(default_factory=list)
    snapshots: dict[float, Snapshot] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    predictions: np.ndarray | None = field(default=None, repr=False)
    stats: dict = field(default_factory=dict)

    # 0.1 names. `order` held the permutation and `ranking` the direction (swapped
    # against the `order=` argument): both now read from their clear 0.2 names.
    order = _Renamed("channel_order")
    ranking = _Renamed("config.order")
    means = _Renamed("channel_means")
    relative = _Renamed("config.relative")
    keep = _Renamed("config.keep")
    baseline_accuracy = _Renamed("baseline_valid_accuracy")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("predictions", "config")}
        return _plain(dict(out, config=self.config.get_config()))


@dataclass
class Candidate(_Record):
    """One fine-tuning schedule tried: the epoch kept, its held-out clean accuracy, and the
    held-out accuracy of every settled epoch."""

    schedule: str
    epoch: int
    holdout_accuracy: float
    accepted: bool
    epoch_accuracy: dict[int, float] = field(default_factory=dict)


@dataclass
class FineTuneChoice(_Record):
    """What fine-pruning chose on clean data alone, and why.

    `schedule` is `None` when B' was kept (too little clean data, or no schedule
    helped); `epoch` is the epoch restored; accuracies are on the held-out part.
    """

    schedule: str | None
    epoch: int | None
    reason: str
    images: int
    holdout_images: int
    tolerance: float
    reference_accuracy: float | None = None
    pruned_accuracy: float | None = None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def kept_b_prime(self) -> bool:
        return self.schedule is None


@dataclass
class FineTuned(_Record):
    """B''_X: B'_X fine-tuned, and its GoodNet G''_X, scored (`choice`: how it was chosen)."""

    valid_accuracy: float | None
    train_loss: list[float]
    repaired: Scores | None = None
    goodnet: Scores | None = None
    files: dict[str, str] = field(default_factory=dict)
    choice: FineTuneChoice | None = None
    detection: Detection | None = None


@dataclass
class ThresholdResult(_Record):
    """Everything about one threshold X: B'_X, G_X, their files and optional B''_X."""

    _OLD_KEYS = {"channels_pruned": "num_pruned"}

    threshold: float
    reached: bool
    num_pruned: int | None
    fraction_pruned: float | None
    valid_accuracy: float | None
    pruned_channels: list[int]
    repaired: Scores | None = None
    goodnet: Scores | None = None
    files: dict[str, str] = field(default_factory=dict)
    fine_tuned: FineTuned | None = None
    detection: Detection | None = None

    channels_pruned = _Renamed("num_pruned")


@dataclass
class Baseline(_Record):
    """The original network B: validation accuracy and its test scores."""

    valid_accuracy: float | None = None
    test_accuracy: float | None = None
    attack_success: float | None = None
    robust_accuracy: float | None = None


@dataclass
class RepairResult(_Record):
    """What `repair` returns and every report writer renders; report.json is `to_dict()`.

    Example:

    >>> result = repair(bad_model, (x_valid, y_valid), test=(x_t, y_t), poisoned=(x_p, y_p))
    >>> result.rows[0].goodnet.detection_rate
    >>> RepairResult.from_dict(json.loads(Path("report/report.json").read_text()))
    """

    model: str
    layer: str
    channels: int
    num_classes: int
    config: PruneConfig
    baseline: Baseline
    rows: list[ThresholdResult]
    curve: list[CurvePoint]
    channel_order: list[int] = field(default_factory=list)
    channel_means: list[float] = field(default_factory=list)
    fine_tune: FineTuneConfig | None = None
    fine_tune_data: str | None = None
    fine_tune_images: int | None = None
    warnings: list[str] = field(default_factory=list)
    saliency_trigger_share: dict | None = None
    report_files: dict[str, str] = field(default_factory=dict)
    title: str = "keras-prune-guard repair report"
    detect: DetectConfig | None = None
    strip: Detection | None = None
    defense: DefenseConfig | None = None
    defense_seconds: float | None = None

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = self.config.get_config()
        out["fine_tune"] = None if self.fine_tune is None else self.fine_tune.get_config()
        out["detect"] = None if self.detect is None else self.detect.get_config()
        out["defense"] = None if self.defense is None else self.defense.get_config()
        out["strip"] = None if self.strip is None else dataclasses.asdict(self.strip)
        out["baseline"] = dataclasses.asdict(self.baseline)
        out["rows"] = [dataclasses.asdict(r) for r in self.rows]
        out["curve"] = [dataclasses.asdict(p) for p in self.curve]
        return _plain(out)

    @classmethod
    def from_dict(cls, data: Any) -> RepairResult:
        """Reads `to_dict()` output (e.g. report.json) back, checking every field.

        Raises:
            ReportError: naming the first field that is missing or of the wrong type.
        """
        return _Reader().result(data)


class _Reader:
    """Builds a `RepairResult` from a dict, naming the path of any bad field."""

    def number(self, value: Any, where: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ReportError(f"summary {where}: expected a number or None, found {value!r}")
        return float(value)

    def required(self, value: Any, where: str) -> float:
        number = self.number(value, where)
        if number is None:
            raise ReportError(f"summary {where}: expected a number, found None")
        return number

    def percent(self, value: Any, where: str, required: bool = False) -> float | None:
        """An accuracy or rate in percent: a finite number in [0, 100] (or None)."""
        number = self.required(value, where) if required else self.number(value, where)
        if number is not None and not (math.isfinite(number) and 0 <= number <= 100):
            strict = "" if math.isfinite(number) else " (report.json is strict JSON: no NaN, inf)"
            raise ReportError(f"summary {where}: expected a percentage in [0, 100]{strict}, "
                              f"found {value!r}")
        return number

    def count(self, value: Any, where: str, upper: int | None = None,
              required: bool = True) -> int | None:
        """A whole number in [0, upper] (`upper` None or 0: no upper bound)."""
        number = self.required(value, where) if required else self.number(value, where)
        if number is None:
            return None
        if not math.isfinite(number) or number != int(number) or number < 0 or (
                upper and number > upper):
            bound = f"[0, {upper}]" if upper else ">= 0"
            raise ReportError(f"summary {where}: expected a whole number in {bound}, found "
                              f"{value!r}")
        return int(number)

    def mapping(self, value: Any, where: str) -> Mapping:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ReportError(
                f"summary {where}: expected a dict or None, found {type(value).__name__}")
        return value

    def items(self, value: Any, where: str) -> list:
        if value is None:
            return []
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ReportError(f"summary {where}: expected a list, found {type(value).__name__}")
        return list(value)

    def scores(self, value: Any, where: str) -> Scores | None:
        if value is None:
            return None
        raw = self.mapping(value, where)
        return Scores(**{f.name: self.percent(raw.get(f.name), f"{where}[{f.name!r}]")
                         for f in dataclasses.fields(Scores)})

    def fraction(self, value: Any, where: str) -> float:
        number = self.required(value, where)
        if not (math.isfinite(number) and 0 <= number <= 1):
            raise ReportError(f"summary {where}: expected a fraction in [0, 1], found {value!r}")
        return number

    def detection(self, value: Any, where: str) -> Detection | None:
        if value is None:
            return None
        raw = self.mapping(value, where)
        rates = ("false_alarm_rate", "detection_rate", "detection_rate_fooled",
                 "detection_at_1", "detection_at_5")
        auroc = raw.get("auroc")
        roc = [[self.fraction(v, f"{where}['roc'][{i}]") for v in self.items(p, where)]
               for i, p in enumerate(self.items(raw.get("roc"), f"{where}['roc']"))]
        if any(len(p) != 2 for p in roc):
            raise ReportError(f"summary {where}['roc']: expected [false_alarm, detection] "
                              "pairs")
        return Detection(
            method=str(raw.get("method") or ""), score=str(raw.get("score") or ""),
            false_alarm=self.fraction(raw.get("false_alarm"), f"{where}['false_alarm']"),
            threshold=self.required(raw.get("threshold"), f"{where}['threshold']"),
            calibration_images=self.count(raw.get("calibration_images"),
                                          f"{where}['calibration_images']"),
            auroc=None if auroc is None else self.fraction(auroc, f"{where}['auroc']"),
            roc=roc, **{k: self.percent(raw.get(k), f"{where}[{k!r}]") for k in rates},
        )

    def choice(self, value: Any, where: str) -> FineTuneChoice | None:
        if value is None:
            return None
        raw = self.mapping(value, where)
        tried = [self.mapping(c, f"{where}['candidates'][{i}]")
                 for i, c in enumerate(self.items(raw.get("candidates"), f"{where}['candidates']"))]
        count = {k: self.number(raw.get(k), f"{where}[{k!r}]") for k in ("images",
                                                                          "holdout_images")}
        return FineTuneChoice(
            schedule=None if raw.get("schedule") is None else str(raw["schedule"]),
            epoch=None if raw.get("epoch") is None else int(
                self.required(raw["epoch"], f"{where}['epoch']")),
            reason=str(raw.get("reason") or ""),
            images=int(count["images"] or 0), holdout_images=int(count["holdout_images"] or 0),
            tolerance=self.required(raw.get("tolerance"), f"{where}['tolerance']"),
            reference_accuracy=self.percent(raw.get("reference_accuracy"),
                                            f"{where}['reference_accuracy']"),
            pruned_accuracy=self.percent(raw.get("pruned_accuracy"),
                                         f"{where}['pruned_accuracy']"),
            candidates=[Candidate(
                schedule=str(c.get("schedule")),
                epoch=int(self.required(c.get("epoch"), f"{where}['candidates'][{i}]['epoch']")),
                holdout_accuracy=self.percent(c.get("holdout_accuracy"),
                                              f"{where}['candidates'][{i}]['holdout_accuracy']",
                                              required=True),
                accepted=bool(c.get("accepted")),
                epoch_accuracy={int(k): self.percent(v, f"{where}['candidates'][{i}]", True)
                                for k, v in self.mapping(c.get("epoch_accuracy"), where).items()},
            ) for i, c in enumerate(tried)],
        )

    def point(self, raw: Any, i: int, channels: int) -> CurvePoint:
        where = f"['curve'][{i}]"
        p = self.mapping(raw, where)
        pruned = p.get("num_pruned", p.get("channels_pruned"))
        pruned = self.count(pruned, f"{where}['num_pruned']", channels)
        fraction = self.number(p.get("fraction_pruned"), f"{where}['fraction_pruned']")
        step = self.count(p.get("step"), f"{where}['step']", channels, required=False)
        return CurvePoint(
            step=step or pruned,
            channel=None if p.get("channel") is None else self.count(
                p["channel"], f"{where}['channel']", channels - 1 if channels else None),
            num_pruned=pruned,
            fraction_pruned=fraction if fraction is not None else (
                pruned / channels if channels else 0.0),
            valid_accuracy=self.percent(p.get("valid_accuracy"), f"{where}['valid_accuracy']",
                                        required=True),
            attack_success=self.percent(p.get("attack_success"), f"{where}['attack_success']"),
        )

    def files(self, value: Any, where: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.mapping(value, where).items() if v}

    def row(self, raw: Any, i: int, channels: int) -> ThresholdResult:
        where = f"['rows'][{i}]"
        r = self.mapping(raw, where)
        threshold = self.required(r.get("threshold"), f"{where}['threshold']")
        pruned = self.count(r.get("num_pruned", r.get("channels_pruned")),
                            f"{where}['num_pruned']", channels, required=False)
        fraction = self.number(r.get("fraction_pruned"), f"{where}['fraction_pruned']")
        if fraction is None and pruned is not None and channels:
            fraction = pruned / channels
        tuned = None
        if r.get("fine_tuned") is not None:
            at = f"{where}['fine_tuned']"
            t = self.mapping(r["fine_tuned"], at)
            tuned = FineTuned(
                valid_accuracy=self.percent(t.get("valid_accuracy"), f"{at}['valid_accuracy']"),
                train_loss=[self.required(v, f"{at}['train_loss']")
                            for v in self.items(t.get("train_loss"), f"{at}['train_loss']")],
                repaired=self.scores(t.get("repaired"), f"{at}['repaired']"),
                goodnet=self.scores(t.get("goodnet"), f"{at}['goodnet']"),
                files=self.files(t.get("files"), f"{at}['files']"),
                choice=self.choice(t.get("choice"), f"{at}['choice']"),
                detection=self.detection(t.get("detection"), f"{at}['detection']"),
            )
        return ThresholdResult(
            threshold=threshold,
            reached=bool(r.get("reached", True)),
            num_pruned=pruned,
            fraction_pruned=fraction,
            valid_accuracy=self.percent(r.get("valid_accuracy"), f"{where}['valid_accuracy']"),
            pruned_channels=[int(c) for c in self.items(r.get("pruned_channels"),
                                                        f"{where}['pruned_channels']")],
            repaired=self.scores(r.get("repaired"), f"{where}['repaired']"),
            goodnet=self.scores(r.get("goodnet"), f"{where}['goodnet']"),
            files=self.files(r.get("files"), f"{where}['files']"),
            fine_tuned=tuned,
            detection=self.detection(r.get("detection"), f"{where}['detection']"),
        )

    def config(self, data: Mapping) -> PruneConfig:
        raw = dict(self.mapping(data.get("config"), "['config']"))
        for key in ("relative", "keep", "order"):  # 0.1 summaries kept these at the top
            if key in data and key not in raw and isinstance(data[key], (str, bool)):
                raw[key] = data[key]
        if "thresholds" not in raw:  # 0.1 summaries: the rows' thresholds
            rows = enumerate(self.items(data.get("rows"), "['rows']"))
            found = [self.required(r.get("threshold"), f"['rows'][{i}]['threshold']")
                     for i, r in rows if isinstance(r, Mapping)]
            if found:
                raw["thresholds"] = found
        try:
            return PruneConfig.from_config(raw)
        except ValueError as err:
            raise ReportError(f"summary['config']: {err}") from None

    def result(self, data: Any) -> RepairResult:
        if not isinstance(data, Mapping):
            raise ReportError(f"summary: expected a dict, found {type(data).__name__}")
        if not self.items(data.get("rows"), "['rows']"):
            raise ReportError("summary['rows']: found none (an empty or foreign summary); "
                              "expected one row per threshold, as report.json holds")
        channels = self.count(data.get("channels"), "['channels']", required=False) or 0
        base = self.mapping(data.get("baseline"), "['baseline']")
        curve = [self.point(p, i, channels)
                 for i, p in enumerate(self.items(data.get("curve"), "['curve']"))]
        raw_tuning = data.get("fine_tune")
        tuning, legacy = None, {}
        if raw_tuning is not None:
            raw_tuning = self.mapping(raw_tuning, "['fine_tune']")
            known = {f.name for f in dataclasses.fields(FineTuneConfig)}
            tuning = {k: v for k, v in raw_tuning.items() if k in known}
            legacy = raw_tuning  # 0.1 kept the data's name and size in here
        return RepairResult(
            title=str(data.get("title") or "keras-prune-guard repair report"),
            model=str(data.get("model") or ""),
            layer=str(data.get("layer") or ""),
            channels=channels,
            num_classes=self.count(data.get("num_classes"), "['num_classes']",
                                   required=False) or 0,
            config=self.config(data),
            baseline=Baseline(**{
                k: self.percent(base.get(k), f"['baseline'][{k!r}]")
                for k in ("valid_accuracy", "test_accuracy", "attack_success",
                          "robust_accuracy")}),
            rows=[self.row(r, i, channels)
                  for i, r in enumerate(self.items(data.get("rows"), "['rows']"))],
            curve=curve,
            channel_order=[int(c) for c in self.items(data.get("channel_order"),
                                                      "['channel_order']")],
            channel_means=[self.required(m, "['channel_means']")
                           for m in self.items(data.get("channel_means"), "['channel_means']")],
            fine_tune=None if tuning is None else FineTuneConfig(**tuning),
            fine_tune_data=data.get("fine_tune_data", legacy.get("data")),
            fine_tune_images=data.get("fine_tune_images", legacy.get("images")),
            warnings=[str(w) for w in self.items(data.get("warnings"), "['warnings']")],
            saliency_trigger_share=data.get("saliency_trigger_share"),
            report_files=self.files(data.get("report_files"), "['report_files']"),
            detect=self.detect_config(data.get("detect")),
            strip=self.detection(data.get("strip"), "['strip']"),
            defense=self.settings(DefenseConfig, data.get("defense"), "defense"),
            defense_seconds=self.number(data.get("defense_seconds"), "['defense_seconds']"),
        )

    def detect_config(self, value: Any) -> DetectConfig | None:
        return self.settings(DetectConfig, value, "detect")

    def settings(self, cls, value: Any, key: str):
        """A configuration stored under `key` (None when absent), checked by its class."""
        if value is None:
            return None
        try:
            return cls.from_config(self.mapping(value, f"[{key!r}]"))
        except ValueError as err:
            raise ReportError(f"summary[{key!r}]: {err}") from None


__all__ = [
    "Baseline",
    "Candidate",
    "CurvePoint",
    "Detection",
    "FineTuneChoice",
    "FineTuned",
    "RepairResult",
    "ReportError",
    "Scores",
    "Snapshot",
    "SweepResult",
    "ThresholdResult",
]
