"""The whole defense as a few named steps: prune, write, score, fine-tune, report.

`repair` checks every argument, then: `prune` (the sweep and B' per X), for each X
`write_models` (B', its GoodNet) and `score` (B', G on test and poisoned data),
optionally `fine_tune_row` (B'' and G''), and `write_report` (the saliency figure and
every report file). It returns a `RepairResult`, which report.json serialises.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from keras_prune_guard._compat import deprecated
from keras_prune_guard._fs.outputs import RunFolder, run_folder
from keras_prune_guard.config import (
    DefenseConfig,
    DetectConfig,
    FineTuneConfig,
    PruneConfig,
    RunOptions,
    options_from,
)
from keras_prune_guard.data.checks import check_model_on, first_images, is_streamed, labelled_pairs
from keras_prune_guard.defend.choice import choose_fine_tune, split_holdout
from keras_prune_guard.defend.finetune import check_data, fine_tune
from keras_prune_guard.defend.masks import mask_prune
from keras_prune_guard.deploy.evaluate import check_true_labels, evaluate
from keras_prune_guard.deploy.export import (
    FORMATS,
    check_formats,
    export_goodnet,
    save_model,
    save_plain_h5,
)
from keras_prune_guard.detect.calibrate import calibration_split, too_few_warning
from keras_prune_guard.detect.figures import goodnet_figures, strip_figures, summary
from keras_prune_guard.detect.goodnet import GoodNetModel
from keras_prune_guard.model.surgery import channel_layer
from keras_prune_guard.pruning.prune import prune
from keras_prune_guard.report import markdown_table
from keras_prune_guard.report import write_report as write_files
from keras_prune_guard.report.saliency import comparison_figure
from keras_prune_guard.results import Baseline, FineTuned, RepairResult, Scores, ThresholdResult


@dataclass
class _Data:
    """The data of one repair: validation, test, poisoned and fine-tuning sets."""

    valid: object
    test: object = None
    poisoned: object = None
    fine_tune: object = None
    fine_tune_label: str | None = None
    formats: tuple[str, ...] = ("savedmodel",)
    true_labels: object = None
    detect: DetectConfig = DetectConfig(false_alarm=0.0, strip=False)
    calibration: object = None  # held-out clean images that set each GoodNet's threshold
    pool: object = None  # the other clean images (STRIP blends with them)

    @property
    def scored(self) -> bool:
        return self.test is not None or self.poisoned is not None


def repair(
    model: keras.Model,
    valid,
    out_dir: str | os.PathLike = "saved_models",
    config: PruneConfig | None = None,
    *,
    test=None,
    poisoned=None,
    true_labels=None,
    fine_tune: FineTuneConfig | None = None,
    fine_tune_data=None,
    fine_tune_label: str | None = None,
    detect: DetectConfig | None = None,
    defense: DefenseConfig | str | None = None,
    trigger_region: tuple[int, int, int, int] | None = None,
    model_label: str | None = None,
    formats=("savedmodel",),
    run: RunOptions | None = None,
    **options,
) -> RepairResult:
    """Repairs B at every threshold, writes the models and the report, returns the result.

    For each threshold X it writes into `out_dir`: `bprime_X{X}.keras` (B' with
    its ChannelMask), `bprime_X{X}.h5` (the mask folded into the weights, plain
    Keras), `goodnet_X{X}/` (one SavedModel) and `goodnet_X{X}.keras`; and the
    report (Markdown, CSV, JSON, plot, HTML) into `out_dir/report/`. The run owns
    `out_dir` (`outputs.run_folder`: checked and locked before the sweep, so a
    second run on it fails at once): every file is written into a staging folder
    and all are published together at the end, listed in `out_dir/manifest.json`,
    so the folder always holds one run's complete output; files of the user in it
    are never deleted.

    By default it also fine-prunes (`FineTuneConfig()`; `FineTuneConfig(epochs=0)`
    prunes only): for each X, copies of B' are trained on clean data (the mask
    frozen), the schedule chosen on held-out clean data alone
    (`choice.choose_fine_tune`), giving B''; it writes `bprime_ft_X{X}.keras`, `.h5`,
    `goodnet_ft_X{X}/` and `goodnet_ft_X{X}.keras` (a GoodNet from B and B'',
    holding both networks), and fills `fine_tuned` in the row of X with the scores
    and the choice. When the clean data are too few to choose, B' is kept: the row
    says so and no B'' files are written.

    Args:
        model: the backdoored network B, taking raw 0..255 pixels.
        valid: clean labelled validation data `(x, y)` or a stream of batches.
        out_dir: output folder. Defaults to "saved_models".
        config: the defense's settings (`PruneConfig`). Defaults to `None`
            (`PruneConfig()`).
        test: clean test data `(x, y)` to score B, each B' and each GoodNet.
            Defaults to `None`.
        poisoned: poisoned test data `(x, y_target)`; its attack success rate
            is also traced along the curve. Defaults to `None`.
        true_labels: the poisoned images' true classes, for robust accuracy
            (R-Acc). Defaults to `None`.
        fine_tune: fine-tuning settings (`FineTuneConfig`; epochs 0 = pruning
            only). Defaults to `None` (`FineTuneConfig()`: fine-pruning, the
            schedule chosen on clean data).
        fine_tune_data: clean `(x, y)` arrays to fine-tune on. Defaults to `None`,
            meaning `valid` (as the Fine-Pruning paper does).
        fine_tune_label: how to name the fine-tuning data in the report.
            Defaults to `None` ("the validation data" or "fine_tune_data").
        detect: how each GoodNet becomes a detector (`DetectConfig`: a threshold
            on its score set on held-out clean images for a false-alarm budget,
            and, with `strip`, STRIP beside it). Defaults to `None`
            (`DetectConfig()`: a 1% budget, no STRIP).
        defense: what ranks the channels to prune (`DefenseConfig`, or its method
            name): "pruning" (mean activation after the last pooling layer, the lab's),
            "rnp" or "anp" (a mask learnt per channel of every conv/BatchNorm layer on
            the clean data fine-tuning trains on; `defend.masks`). Defaults to `None`
            ("pruning").
        trigger_region: (row_start, row_stop, col_start, col_stop) of the
            trigger, for the saliency share. Defaults to `None`.
        model_label: how to name B in the report. Defaults to the model's name.
        formats: the GoodNet exports to write, each checked in its runtime after
            writing: "savedmodel" (`goodnet_X{X}/`), "onnx" (`goodnet_X{X}.onnx`),
            "litert" (`goodnet_X{X}.tflite`). Defaults to ("savedmodel",).
        run: strategy, activation cache folder, verbosity (`RunOptions`).
            Defaults to `None` (`RunOptions()`).
        **options: `PruneConfig` / `RunOptions` fields one by one; the 0.1
            keywords `fine_tune_epochs`, `fine_tune_lr`, `log`, `cache_dir` are
            accepted with a `DeprecationWarning`.

    `valid`, `test` and `poisoned` may be `tf.data.Dataset`s of `(x, y)`
    batches (e.g. `data.lab_h5_dataset`), read batch by batch, so the images
    never have to be in memory at once (fine-tuning then needs
    `fine_tune_data` as arrays).

    Returns:
        A `RepairResult` (report.json is its `to_dict()`).

    Example:

    >>> result = repair(bad_model, (x_valid, y_valid), "saved_models",
    ...                 PruneConfig(thresholds=[2, 4, 10]),
    ...                 test=(x_test, y_test), poisoned=(x_bd, y_bd))
    >>> result.rows[1].goodnet.detection_rate
    """
    fine_tune, say = _legacy_options(options, fine_tune)
    config, run = options_from(config, run, options, "repair")
    if say is not None:
        run = _Logging(run.strategy, run.activation_cache, run.verbose, say)
    num_classes = int(model.output_shape[-1])
    defense = _defense(defense, valid)
    data = _check_inputs(model, valid, test, poisoned, fine_tune, fine_tune_data,
                         fine_tune_label, num_classes)
    data.true_labels = _true_labels(true_labels, data.poisoned)
    _detection_data(data, detect, fine_tune)
    channel_layer(model, config.after)
    data.formats = check_formats(formats)
    with run_folder(out_dir, log=run.log) as folder:  # checked and locked before any work
        pruned = _prune(model, data, config, defense, fine_tune, run)
        result = _new_result(model, pruned.sweep, config, fine_tune, data, model_label, run)
        result.defense = defense
        result.defense_seconds = pruned.sweep.stats.get("mask_seconds")
        _calibration_note(result, data, run)
        figure_models = {"B": model}
        for t, snap in pruned.sweep.snapshots.items():
            row, models = repair_at(model, pruned.snapshots[t], snap, pruned.sweep.channels,
                                    folder, data, fine_tune, run)
            result.rows.append(row)
            figure_models.update(models)
        result.strip = _strip(model, data, run)
        write_report(result, folder, figure_models, data, trigger_region, run)
        folder.commit()  # every file of the run published together
    return result


@dataclass(frozen=True)
class _Logging(RunOptions):
    """0.1's `log=` printer as run options (deprecated)."""

    say: Callable[[str], None] = print

    def log(self, message: str) -> None:
        self.say(message)


def _legacy_options(options: dict, fine_tune: FineTuneConfig | None):
    """Pops the 0.1 keywords `fine_tune_epochs`, `fine_tune_lr` and `log` from `options`."""
    say = options.pop("log", None)
    if say is not None:
        deprecated("repair(log=...)", "repair(run=RunOptions(verbose=...))", stacklevel=4)
    epochs, lr = options.pop("fine_tune_epochs", None), options.pop("fine_tune_lr", None)
    if epochs is None and lr is None:
        return fine_tune or FineTuneConfig(), say
    deprecated("repair(fine_tune_epochs=..., fine_tune_lr=...)",
               "repair(fine_tune=FineTuneConfig(epochs=..., learning_rate=...))",
               stacklevel=4)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or epochs < 0):
        raise ValueError(f"fine_tune_epochs must be an integer >= 0. Received: {epochs!r}")
    fields = {"epochs": epochs, "learning_rate": lr}
    return (fine_tune or FineTuneConfig()).replace(
        **{k: v for k, v in fields.items() if v is not None}), say


def _check_inputs(model, valid, test, poisoned, fine_tune: FineTuneConfig, fine_tune_data,
                  fine_tune_label, num_classes: int) -> _Data:
    """Every data argument checked before any pass over the data."""
    if fine_tune_data is not None and not fine_tune.epochs:
        raise ValueError(
            "fine_tune_data was given but fine_tune_epochs=0 (fine_tune.epochs), so it would "
            "not be used; pass FineTuneConfig(epochs >= 1) (or drop fine_tune_data)."
        )
    if fine_tune.epochs and fine_tune_data is None and is_streamed(valid):
        raise ValueError(
            "fine-pruning (on unless FineTuneConfig(epochs=0)) needs its data in memory, and "
            "valid is a streamed tf.data.Dataset: pass fine_tune_data=(x, y) arrays, valid as "
            "arrays, or fine_tune=FineTuneConfig(epochs=0) to prune only."
        )
    data = _Data(
        valid=labelled_pairs(valid, "valid", num_classes),
        test=None if test is None else labelled_pairs(test, "test", num_classes),
        poisoned=None if poisoned is None else labelled_pairs(poisoned, "poisoned",
                                                               num_classes),
    )
    check_model_on(model, data.test, "test")  # valid: checked by the sweep, before its pass
    if fine_tune.epochs:
        label = fine_tune_label or "fine_tune_data"
        data.fine_tune = check_data(model, valid if fine_tune_data is None else fine_tune_data,
                                    label)
        data.fine_tune_label = fine_tune_label or (
            "the validation data" if fine_tune_data is None else "fine_tune_data")
    return data


def _detection_data(data: _Data, detect: DetectConfig | None, fine_tune: FineTuneConfig
                    ) -> None:
    """Checks `detect` and sets aside the held-out clean images that calibrate each GoodNet.

    They are the images fine-pruning holds out (`calibrate.calibration_split`), taken
    from the fine-tuning data, or from the validation data when nothing is trained.
    """
    if detect is not None and not isinstance(detect, DetectConfig):
        raise ValueError(f"repair: detect must be a DetectConfig or None. Received: {detect!r}")
    data.detect = detect or DetectConfig()
    if not data.detect.calibrated:
        return
    clean = data.fine_tune if data.fine_tune is not None else data.valid
    if is_streamed(clean):
        clean = _first_pairs(clean, CALIBRATION_FROM_STREAM)
    data.pool, data.calibration = calibration_split(clean, fine_tune)


#: Clean images read from a streamed validation set to calibrate on (when nothing is trained).
CALIBRATION_FROM_STREAM = 4096


def _first_pairs(stream, count: int) -> tuple:
    x = first_images(stream, count)
    return x, np.zeros(len(x), "int64")  # the split needs labels; calibration reads none


def _strip(model, data: _Data, run: RunOptions):
    """STRIP on B beside the GoodNets, on the same clean images and budget (or None)."""
    if not (data.detect.strip and data.calibration is not None):
        return None
    run.log(f"STRIP: blending each test image with {data.detect.strip_blends} clean images ...")
    figures = strip_figures(model, data.pool, data.calibration, data.test, data.poisoned,
                            data.detect)
    if figures is not None:
        run.log(summary("STRIP on B", figures))
    return figures


def _calibration_note(result: RepairResult, data: _Data, run: RunOptions) -> None:
    """Records the detection settings, and a warning when too few images calibrate."""
    result.detect = data.detect
    if data.calibration is None:
        return
    note = too_few_warning(len(data.calibration), data.detect.false_alarm)
    if note:
        result.warnings.append(note)
        run.log(f"Warning: {note}")


def _true_labels(true_labels, poisoned):
    """The poisoned images' true classes, checked against the poisoned data (or None)."""
    if true_labels is None:
        return None
    if poisoned is None or is_streamed(poisoned):
        raise ValueError("true_labels needs poisoned=(x, y_target) arrays to belong to; "
                         f"received poisoned={'a stream' if poisoned is not None else None}")
    return check_true_labels(true_labels, len(poisoned[0]))


def _new_result(model, swept, config: PruneConfig, fine_tune: FineTuneConfig, data: _Data,
                model_label: str | None, run: RunOptions) -> RepairResult:
    """The result of a repair before its rows: the sweep, B's scores, the settings."""
    result = RepairResult(
        model=model_label or model.name, layer=swept.layer, channels=swept.channels,
        num_classes=int(model.output_shape[-1]), config=config,
        baseline=_baseline(model, swept.baseline_valid_accuracy, data, run),
        rows=[], curve=swept.curve, channel_order=swept.channel_order,
        channel_means=swept.channel_means, warnings=list(swept.warnings),
    )
    if fine_tune.epochs:
        result.fine_tune, result.fine_tune_data = fine_tune, data.fine_tune_label
        result.fine_tune_images = len(data.fine_tune[0])
    return result


def repair_at(model, b_prime, snap, channels: int, folder: RunFolder, data: _Data,
              fine_tune: FineTuneConfig, run: RunOptions) -> tuple[ThresholdResult, dict]:
    """One threshold X: writes and scores B'_X and G_X (and B''_X, G''_X when fine-tuning).

    Returns:
        The row of X and the models to draw in the saliency figure.
    """
    t, tag = snap.threshold, f"X{snap.threshold:g}"
    row = ThresholdResult(
        threshold=t, reached=snap.reached, num_pruned=snap.num_pruned,
        fraction_pruned=snap.fraction_pruned, valid_accuracy=snap.valid_accuracy,
        pruned_channels=snap.pruned_channels,
    )
    row.files, row.repaired, row.goodnet, row.detection = _write_and_score(
        model, b_prime, tag, folder, data, run)
    run.log(f"X={t:g}: {snap.num_pruned}/{channels} channels pruned, validation accuracy "
            f"{snap.valid_accuracy:.2f}%; wrote {folder.out_dir / ('*_' + tag)}* (staged)")
    models = {f"B' X={t:g}": b_prime}
    if fine_tune.epochs:
        row.fine_tuned, b_second = fine_tune_row(model, b_prime, tag, folder, data, fine_tune,
                                                 run)
        if b_second is not b_prime:
            models[f"B'' X={t:g}"] = b_second
    return row, models


def _defense(defense: DefenseConfig | str | None, valid) -> DefenseConfig:
    """`defense` as a `DefenseConfig`, refused before any work when it cannot run."""
    if isinstance(defense, str):
        defense = DefenseConfig(method=defense)
    if defense is not None and not isinstance(defense, DefenseConfig):
        raise ValueError("repair: defense must be a DefenseConfig, a method name or None. "
                         f"Received: {defense!r}")
    defense = defense or DefenseConfig()
    if defense.learns_masks and is_streamed(valid):
        raise ValueError(f"defense {defense.method!r} learns masks on the clean images, so it "
                         "needs valid as (x, y) arrays; received a streamed tf.data.Dataset")
    return defense


def _prune(model, data: _Data, config: PruneConfig, defense: DefenseConfig,
           fine_tune: FineTuneConfig, run: RunOptions):
    if defense.learns_masks:
        check_model_on(model, data.valid, "valid")
        # The rows fine-tuning trains on: its held-out rows (schedule choice, calibration)
        # stay unseen by every step that shapes B''.
        clean = data.fine_tune if data.fine_tune is not None else data.valid
        train = split_holdout(clean, fine_tune.holdout, fine_tune.seed)[0]
        run.log(f"{defense.method.upper()}: learning a mask per channel on {len(train[0])} "
                "clean images ...")
        return mask_prune(model, data.valid, config, defense, train=train,
                          poisoned=_arrays_or_none(data.poisoned), run=run)
    what = "the streamed validation images" if is_streamed(data.valid) else \
        f"{len(data.valid[0])} validation images"
    run.log(f"Ranking {what} and sweeping the mask ...")
    return prune(model, data.valid, config, poisoned=data.poisoned, run=run)


def _arrays_or_none(data):
    """Poisoned data for the mask sweep's curve: arrays as they are, a stream is not traced."""
    return None if data is None or is_streamed(data) else data


def _baseline(model, valid_accuracy: float, data: _Data, run: RunOptions) -> Baseline:
    baseline = Baseline(valid_accuracy=valid_accuracy)
    if data.scored:
        scores = score(model, data, run)
        baseline.test_accuracy, baseline.attack_success = (scores.test_accuracy,
                                                           scores.attack_success)
        baseline.robust_accuracy = scores.robust_accuracy
    return baseline


def score(model, data: _Data, run: RunOptions, flag_class: int | None = None) -> Scores | None:
    """`evaluate` on the repair's test and poisoned data (None when it has neither)."""
    if not data.scored:
        return None
    return evaluate(model, data.test, data.poisoned, flag_class=flag_class,
                    true_labels=data.true_labels, strategy=run.strategy)


def _write_and_score(model, repaired, tag: str, folder: RunFolder, data: _Data,
                     run: RunOptions):
    """Stages B' (or B'') and its GoodNet for `tag` (calibrated when `data.detect` says so);
    returns their final paths, their scores and the GoodNet's `Detection` (or None)."""
    goodnet = GoodNetModel(model, repaired, name=f"goodnet_{tag}", score=data.detect.score)
    if data.calibration is not None:
        goodnet = goodnet.calibrate(data.calibration, data.detect.false_alarm)
    check = None if data.test is None else first_images(data.test, 64)
    files = write_models(repaired, goodnet, folder.staging, tag, data.formats, check)
    files = {k: str(v) for k, v in folder.final(files).items()}
    figures = None if data.calibration is None else goodnet_figures(
        goodnet, data.test, data.poisoned, len(data.calibration))
    if figures is not None:
        name = "G'' " if tag.startswith("ft_") else "G "
        run.log(summary(name + tag.removeprefix("ft_").replace("X", "X="), figures))
    return (files, score(repaired, data, run), score(goodnet, data, run, goodnet.num_classes),
            figures)


def write_models(repaired: keras.Model, goodnet: GoodNetModel, out_dir: Path, tag: str,
                 formats=("savedmodel",), images=None) -> dict:
    """Writes B' (`.keras`, plain `.h5`) and its GoodNet (`.keras`, each export) for `tag`.

    Each GoodNet export is checked in its own runtime on `images` (default: seeded ones).
    """
    files = {
        "repaired_keras": save_model(repaired, out_dir / f"bprime_{tag}.keras"),
        "repaired_h5": save_plain_h5(repaired, out_dir / f"bprime_{tag}.h5"),
    }
    for name in formats:
        path = out_dir / f"goodnet_{tag}{FORMATS[name]}"
        files[f"goodnet_{name}"] = export_goodnet(goodnet, path, name, images=images)
    files["goodnet_keras"] = save_model(goodnet, out_dir / f"goodnet_{tag}.keras")
    return files


def fine_tune_row(model, b_prime, tag: str, folder: RunFolder, data: _Data,
                  config: FineTuneConfig, run: RunOptions) -> tuple[FineTuned, keras.Model]:
    """Fine-prunes B' (its schedule chosen on clean data), writes B'' and its GoodNet,
    scores both; returns B'' too (B' itself when it was kept: then nothing is written)."""
    choice = None
    if config.learning_rate is None:
        chosen = choose_fine_tune(b_prime, data.fine_tune, config, original=model, log=run.log)
        b_second, choice = chosen.model, chosen.choice
    else:
        b_second = fine_tune(b_prime, data.fine_tune, config)
    where = tag.replace("X", "X=")
    if b_second is b_prime:
        run.log(f"{where}: fine-pruning kept B': {choice.reason}")
        row = FineTuned(valid_accuracy=None, train_loss=[], choice=choice)
        return row, b_second
    files, repaired, goodnet, figures = _write_and_score(model, b_second, f"ft_{tag}", folder,
                                                         data, run)
    row = FineTuned(
        valid_accuracy=evaluate(b_second, data.valid, strategy=run.strategy).test_accuracy,
        train_loss=[float(v) for v in b_second.history.history.get("loss", [])],
        repaired=repaired, goodnet=goodnet, files=files, choice=choice, detection=figures,
    )
    how = f"{config.epochs} epochs" if choice is None else \
        f"{choice.schedule}, epoch {choice.epoch}/{config.epochs} ({choice.reason})"
    tuned_on = " (the data it was tuned on)" if data.fine_tune_label == \
        "the validation data" else ""
    run.log(f"{where}: fine-tuned B' ({how}) on {len(data.fine_tune[0])} images: validation "
            f"accuracy {row.valid_accuracy:.2f}%{tuned_on}; wrote "
            f"{folder.out_dir / ('*_ft_' + tag)}* (staged)")
    return row, b_second


def write_report(result: RepairResult, folder: RunFolder, figure_models: dict, data: _Data,
                 trigger_region, run: RunOptions) -> RepairResult:
    """Draws the saliency figure (with test and poisoned images) and stages every report file."""

    report_dir = folder.staging / "report"
    figures = {}
    if data.test is not None and data.poisoned is not None:

        clean_images, bd_images = first_images(data.test, 64), first_images(data.poisoned, 64)
        pairs = min(len(clean_images), len(bd_images))
        fig = comparison_figure(figure_models, clean_images[:pairs], bd_images[:pairs],
                                report_dir / "saliency.png", trigger_region=trigger_region)
        figures["Saliency (vanilla gradient) of B and each B'"] = fig["path"]
        result.saliency_trigger_share = fig.get("shares") or None
    write_files(result, report_dir, figures=figures, listed_as=folder.final(report_dir))
    run.log(markdown_table(result))
    run.log(f"Report written to {folder.final(report_dir)}/ "
            f"({', '.join(sorted(Path(p).name for p in result.report_files.values()))})")
    return result


__all__ = ["repair", "write_models"]
