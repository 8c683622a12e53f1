"""The whole defense in one call: B -> sweep -> B' per X (-> B'' fine-tuned) -> GoodNets -> files
-> report."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_prune_guard.callbacks import prune
from keras_prune_guard.evaluate import evaluate
from keras_prune_guard.export import export_goodnet, save_model, save_plain_h5
from keras_prune_guard.finetune import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEARNING_RATE,
    check_data,
    fine_tune,
)
from keras_prune_guard.goodnet import GoodNetModel
from keras_prune_guard.outputs import RunFolder, run_folder
from keras_prune_guard.surgery import channel_layer
from keras_prune_guard.sweep import DEFAULT_THRESHOLDS, check_thresholds

Data = tuple[np.ndarray, np.ndarray]


def repair(
    model: keras.Model,
    valid: Data,
    out_dir: str | os.PathLike = "saved_models",
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    after: str | None = None,
    order: str = "ascending",
    relative: bool = False,
    keep: str = "first_below",
    test: Data | None = None,
    poisoned: Data | None = None,
    full_curve: bool = False,
    trigger_region: tuple[int, int, int, int] | None = None,
    model_label: str | None = None,
    fine_tune_epochs: int = 0,
    fine_tune_data: Data | None = None,
    fine_tune_lr: float = DEFAULT_LEARNING_RATE,
    fine_tune_label: str | None = None,
    log: Callable[[str], None] = print,
    strategy=None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Repairs B at every threshold, writes the models and the report, returns the summary.

    For each threshold X it writes into `out_dir`: `bprime_X{X}.keras` (B' with
    its ChannelMask), `bprime_X{X}.h5` (the mask folded into the weights, plain
    Keras), `goodnet_X{X}/` (one SavedModel) and `goodnet_X{X}.keras`; and the
    report (Markdown, CSV, JSON, plot, HTML) into `out_dir/report/`. The run owns
    `out_dir` (`outputs.run_folder`: checked and locked before the sweep, so a
    second run on it fails at once): every file is written into a staging folder
    and all are published together at the end, listed in `out_dir/manifest.json`,
    so the folder always holds one run's complete output; files of the user in it
    are never deleted.

    With `fine_tune_epochs` E > 0 it also fine-prunes: for each X an independent
    copy of B' is trained E epochs on clean data (the mask frozen, see
    `fine_tune`), giving B''; it writes `bprime_ft_X{X}.keras`,
    `bprime_ft_X{X}.h5`, `goodnet_ft_X{X}/` and `goodnet_ft_X{X}.keras` (a
    GoodNet from B and B'', holding both networks), and adds a `fine_tuned`
    entry to the row of X. With E = 0 nothing changes.

    Args:
        model: the backdoored network B, taking raw 0..255 pixels.
        valid: clean labelled validation data `(x, y)`.
        out_dir: output folder. Defaults to "saved_models".
        thresholds: accuracy drops X. Defaults to (2, 4, 10).
        after: layer to mask. Defaults to `None` (the last pooling layer).
        order, relative, keep, full_curve: as in `sweep`.
        test: clean test data `(x, y)` to score B, each B' and each GoodNet.
            Defaults to `None`.
        poisoned: poisoned test data `(x, y_target)`; its attack success rate
            is also traced along the curve. Defaults to `None`.
        trigger_region: (row_start, row_stop, col_start, col_stop) of the
            trigger, for the saliency share. Defaults to `None`.
        model_label: how to name B in the report. Defaults to the model's name.
        fine_tune_epochs: epochs of fine-tuning of each B' (0: pruning only).
            Defaults to 0.
        fine_tune_data: clean `(x, y)` to fine-tune on. Defaults to `None`,
            meaning `valid` (as the Fine-Pruning paper does).
        fine_tune_lr: initial Adam learning rate of the fine-tuning (cosine
            decay to 0). Defaults to `DEFAULT_LEARNING_RATE` (1e-4).
        fine_tune_label: how to name the fine-tuning data in the report.
            Defaults to `None` ("the validation data" or "fine_tune_data").
        log: progress printer. Defaults to `print`.
        strategy: a `tf.distribute` strategy for the passes over the data (the
            sweep, every evaluation); results equal the single-device run.
            Defaults to `None`.
        cache_dir: keep the sweep's cached activations in a file in this folder
            instead of RAM (see `sweep`). Defaults to `None`.

    `valid`, `test` and `poisoned` may be `tf.data.Dataset`s of `(x, y)`
    batches (e.g. `data.lab_h5_dataset`), read batch by batch, so the images
    never have to be in memory at once (fine-tuning then needs
    `fine_tune_data` as arrays).

    Returns:
        The report summary (see `keras_prune_guard.report`).

    Example:

    >>> summary = repair(bad_model, (x_valid, y_valid), "saved_models",
    ...                  test=(x_test, y_test), poisoned=(x_bd, y_bd))
    >>> "fine_tuned" in summary["rows"][1]  # no fine-tuning asked for
    False
    >>> summary = repair(bad_model, (x_valid, y_valid), fine_tune_epochs=5,
    ...                  test=(x_test, y_test), poisoned=(x_bd, y_bd))
    >>> summary["rows"][1]["fine_tuned"]["repaired"]["attack_success"]
    """
    if isinstance(fine_tune_epochs, bool) or not isinstance(fine_tune_epochs, int) or (
        fine_tune_epochs < 0
    ):
        raise ValueError(
            f"fine_tune_epochs must be an integer >= 0. Received: {fine_tune_epochs!r}"
        )
    if fine_tune_data is not None and fine_tune_epochs == 0:
        raise ValueError(
            "fine_tune_data was given but fine_tune_epochs=0, so it would not be used; "
            "pass fine_tune_epochs >= 1 (or drop fine_tune_data)."
        )
    if fine_tune_epochs and not fine_tune_lr > 0:
        raise ValueError(f"fine_tune_lr must be > 0. Received: fine_tune_lr={fine_tune_lr!r}")
    if fine_tune_epochs and fine_tune_data is None and _streamed(valid):
        raise ValueError(
            "fine_tune_epochs needs the fine-tuning data in memory, and valid is a streamed "
            "tf.data.Dataset: pass fine_tune_data=(x, y) arrays (or valid as arrays)."
        )
    if fine_tune_data is not None:  # fail before the sweep, not after it
        fine_tune_data = check_data(model, fine_tune_data, fine_tune_label or "fine_tune_data")
    if fine_tune_label is None:
        fine_tune_label = "the validation data" if fine_tune_data is None else "fine_tune_data"
    ft_data = valid if fine_tune_data is None else fine_tune_data
    check_thresholds(thresholds)  # fail on arguments before any work
    channel_layer(model, after)
    out_dir = Path(out_dir)
    with run_folder(out_dir, log=log) as run:  # checked and locked before any work; every
        # file is written below run.staging, and run.commit() publishes them together
        what = "the streamed validation images" if _streamed(valid) else \
            f"{len(valid[0])} validation images"
        log(f"Ranking {what} and sweeping the mask ...")
        last = {"shown": -1}

        def progress(step, total, acc):
            if step * 10 // total != last["shown"]:
                last["shown"] = step * 10 // total
                log(f"  step {step}/{total}: validation accuracy {acc:.2f}%")

        result = prune(
            model,
            *((valid, None) if _streamed(valid) else valid),
            thresholds,
            after=after,
            order=order,
            relative=relative,
            keep=keep,
            poisoned=poisoned,
            full_curve=full_curve,
            progress=progress,
            strategy=strategy,
            cache_dir=cache_dir,
        )
        swept = result.sweep
        num_classes = int(model.output_shape[-1])
        baseline = {"valid_accuracy": swept.baseline_accuracy, "test_accuracy": None,
                    "attack_success": None}
        if test is not None or poisoned is not None:
            baseline.update(evaluate(model, test, poisoned, strategy=strategy))

        rows, figure_models = [], {"B": model}
        for t, snap in swept.snapshots.items():
            tag = f"X{t:g}"
            b_prime = result.snapshots[t]
            goodnet = GoodNetModel(model, b_prime, name=f"goodnet_{tag}")
            files = run.final(write_models(b_prime, goodnet, run.staging, tag))
            row = {
                "threshold": t,
                "reached": snap.reached,
                "channels_pruned": snap.channels_pruned,
                "fraction_pruned": snap.channels_pruned / swept.channels,
                "valid_accuracy": snap.valid_accuracy,
                "pruned_channels": snap.pruned_channels,
                "repaired": None,
                "goodnet": None,
                "files": {k: str(v) for k, v in files.items()},
            }
            if test is not None or poisoned is not None:
                row["repaired"] = evaluate(b_prime, test, poisoned, strategy=strategy)
                row["goodnet"] = evaluate(goodnet, test, poisoned, flag_class=num_classes,
                                          strategy=strategy)
            rows.append(row)
            figure_models[f"B' X={t:g}"] = b_prime
            log(f"X={t:g}: {snap.channels_pruned}/{swept.channels} channels pruned, "
                f"validation accuracy {snap.valid_accuracy:.2f}%; wrote {out_dir / ('*_' + tag)}*")
            if fine_tune_epochs:
                row["fine_tuned"] = _fine_tuned_row(
                    model, b_prime, tag, run, ft_data, valid, test, poisoned,
                    epochs=fine_tune_epochs, learning_rate=fine_tune_lr, strategy=strategy,
                )
                figure_models[f"B'' X={t:g}"] = row["fine_tuned"].pop("model")
                log(f"X={t:g}: fine-tuned B' for {fine_tune_epochs} epochs on "
                    f"{len(ft_data[0])} images: validation accuracy "
                    f"{row['fine_tuned']['valid_accuracy']:.2f}%"
                    f"{' (the data it was tuned on)' if fine_tune_data is None else ''}; wrote "
                    f"{out_dir / ('*_ft_' + tag)}*")

        summary = {
            "title": "keras-prune-guard repair report",
            "model": model_label or model.name,
            "layer": swept.layer,
            "channels": swept.channels,
            "num_classes": num_classes,
            "order": swept.ranking,
            "relative": swept.relative,
            "keep": swept.keep,
            "ranking": swept.order,
            "channel_means": swept.means,
            "baseline": baseline,
            "rows": rows,
            "curve": swept.curve,
            "warnings": swept.warnings,
        }
        if fine_tune_epochs:
            summary["fine_tune"] = {
                "epochs": fine_tune_epochs,
                "learning_rate": fine_tune_lr,
                "batch_size": DEFAULT_BATCH_SIZE,
                "optimizer": "adam, cosine decay",
                "data": fine_tune_label,
                "images": len(ft_data[0]),
            }
        summary = write_summary(summary, run, figure_models, test, poisoned, trigger_region,
                                log)
        run.commit()
    return summary


def write_models(repaired: keras.Model, goodnet: GoodNetModel, out_dir: Path, tag: str) -> dict:
    """Writes B' (`.keras`, plain `.h5`) and its GoodNet (SavedModel, `.keras`) for `tag`."""
    return {
        "repaired_keras": save_model(repaired, out_dir / f"bprime_{tag}.keras"),
        "repaired_h5": save_plain_h5(repaired, out_dir / f"bprime_{tag}.h5"),
        "goodnet_savedmodel": export_goodnet(goodnet, out_dir / f"goodnet_{tag}"),
        "goodnet_keras": save_model(goodnet, out_dir / f"goodnet_{tag}.keras"),
    }


def _streamed(data) -> bool:
    """True for data given as a dataset or iterable of batches rather than `(x, y)` arrays."""
    return data is not None and not (isinstance(data, tuple) and hasattr(data[0], "shape"))


def _first_images(data, count: int) -> np.ndarray:
    """The first `count` images of `(x, y)` arrays or of a dataset of `(x, y)` batches."""
    if not _streamed(data):
        return data[0][:count]
    from keras_prune_guard.distribute import batches

    taken, total = [], 0
    for x, _ in batches(data):
        taken.append(x[: count - total])
        total += len(taken[-1])
        if total >= count:
            break
    return np.concatenate(taken)


def _fine_tuned_row(model, b_prime, tag, run: RunFolder, ft_data, valid, test, poisoned, *,
                    epochs, learning_rate, strategy=None) -> dict:
    """Fine-tunes a copy of B', writes B'' and its GoodNet, scores both (with "model": B'')."""
    b_second = fine_tune(b_prime, ft_data[0], ft_data[1], epochs=epochs,
                         learning_rate=learning_rate)
    goodnet = GoodNetModel(model, b_second, name=f"goodnet_ft_{tag}")
    files = run.final(write_models(b_second, goodnet, run.staging, f"ft_{tag}"))
    num_classes = int(model.output_shape[-1])
    scored = test is not None or poisoned is not None
    return {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "valid_accuracy": evaluate(b_second, valid, strategy=strategy)["test_accuracy"],
        "train_loss": [float(v) for v in b_second.history.history.get("loss", [])],
        "repaired": evaluate(b_second, test, poisoned, strategy=strategy) if scored else None,
        "goodnet": (
            evaluate(goodnet, test, poisoned, flag_class=num_classes, strategy=strategy)
            if scored else None
        ),
        "files": {k: str(v) for k, v in files.items()},
        "model": b_second,
    }


def write_summary(summary, run: RunFolder, figure_models, test, poisoned, trigger_region,
                  log) -> dict:
    """Adds the saliency figure (when test images exist) and writes the report files."""
    from keras_prune_guard.report import markdown_table, write_report

    report_dir = run.staging / "report"
    figures = {}
    if test is not None and poisoned is not None:
        from keras_prune_guard.saliency import comparison_figure

        clean_images, bd_images = _first_images(test, 64), _first_images(poisoned, 64)
        pairs = min(len(clean_images), len(bd_images))
        fig = comparison_figure(
            figure_models,
            clean_images[:pairs],
            bd_images[:pairs],
            report_dir / "saliency.png",
            trigger_region=trigger_region,
        )
        figures["Saliency (vanilla gradient) of B and each B'"] = fig["path"]
        if fig.get("shares"):
            summary["saliency_trigger_share"] = fig["shares"]
    paths = write_report(summary, report_dir, figures=figures)
    summary["report_files"] = {k: str(v) for k, v in run.final(paths).items()}
    log(markdown_table(summary))
    names = ", ".join(sorted(p.name for p in paths.values()))
    log(f"Report written to {run.final(report_dir)}/ ({names})")
    return summary
