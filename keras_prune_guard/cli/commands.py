"""The subcommands behind `keras-prune-guard`: read files, call the library, print."""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_prune_guard._fs.outputs import check_out_dir
from keras_prune_guard.benchmark import ensure_benchmark
from keras_prune_guard.benchmark.matrix import run_matrix
from keras_prune_guard.cli.parser import config_from_args
from keras_prune_guard.config import (
    DefenseConfig,
    DetectConfig,
    FineTuneConfig,
    PruneConfig,
    RunOptions,
)
from keras_prune_guard.data.checks import check_model_on
from keras_prune_guard.data.files import (
    DataError,
    iter_lab_h5,
    lab_h5_dataset,
    load_images,
    load_inputs,
    load_lab_h5,
    load_true_labels,
)
from keras_prune_guard.deploy.evaluate import (
    evaluate,
    load_model_for_eval,
    predict_classes,
)
from keras_prune_guard.deploy.export import (
    CHECK_ATOL,
    CHECK_IMAGE_COUNT,
    FORMATS,
    RUNTIME_NAMES,
    check_export_path,
    check_formats,
    export_goodnet,
)
from keras_prune_guard.detect.goodnet import GoodNetModel
from keras_prune_guard.model.graph import is_graph_model
from keras_prune_guard.model.loading import image_shape_of, load_network, num_classes_of
from keras_prune_guard.model.surgery import channel_layer
from keras_prune_guard.repair import repair as run_repair
from keras_prune_guard.report import fine_pruning_table
from keras_prune_guard.report.saliency import comparison_figure


def _read_for(model, path: str | None):
    if path is None:
        return None
    return load_lab_h5(path, image_shape=image_shape_of(model), num_classes=num_classes_of(model))


def _stream_for(model, path: str | None):
    """The file as a `tf.data` stream, after one check of all of it (no model, no TensorFlow).

    A bad image deep in the file then fails here, in one line, before the sweep, not
    inside the pipeline after it.
    """
    if path is None:
        return None
    shape, classes = image_shape_of(model), num_classes_of(model)
    for _ in iter_lab_h5(path, image_shape=shape, num_classes=classes):
        pass
    return lab_h5_dataset(path, image_shape=shape, num_classes=classes)


def _strategy(name: str):
    if name == "none":
        return None

    return tf.distribute.MirroredStrategy()


def _data_errors(run):
    """Runs `run()`; a file error raised inside a tf.data pipeline becomes a `DataError` again."""

    try:
        return run()
    except tf.errors.OpError as err:
        text = str(err.message)
        if "DataError: " not in text:
            raise
        raise DataError(text.split("DataError: ", 1)[1].split("\n", 1)[0]) from err


def _configs(args: argparse.Namespace) -> tuple[PruneConfig, FineTuneConfig, DetectConfig]:
    """The defense's configuration, built and checked once from the options."""
    defense(args)  # checked with the others, before any file is read
    return (config_from_args(PruneConfig, args),
            config_from_args(FineTuneConfig, args, "fine_tune_"),
            config_from_args(DetectConfig, args))


def defense(args: argparse.Namespace) -> DefenseConfig:
    """The `--defense` options as a `DefenseConfig`."""
    return config_from_args(DefenseConfig, args, "defense_")


def repair(args: argparse.Namespace) -> int:
    """`keras-prune-guard repair`: see `build_parser` for the options."""
    config, tuning, detect = _configs(args)  # argument errors before reading any file
    formats = check_formats(args.formats, "--formats")
    if args.fine_tune_data is not None and not tuning.epochs:
        raise ValueError(f"--fine-tune-data {args.fine_tune_data} needs --fine-tune-epochs E "
                         "(E >= 1); received --fine-tune-epochs 0")
    if args.stream and tuning.epochs and args.fine_tune_data is None:
        raise ValueError("--stream: fine-pruning (on unless --fine-tune-epochs 0) needs "
                         "--fine-tune-data FILE, read into memory for training; received no "
                         "--fine-tune-data (pass one, or --fine-tune-epochs 0 to prune only)")
    run = RunOptions(strategy=_strategy(args.strategy), activation_cache=args.activation_cache)
    model = load_network(
        args.model,
        weights_path=args.weights,
        architecture=args.architecture,
        input_scale=args.input_scale,
        safe_mode=not args.unsafe_deserialization,
    )
    if not is_graph_model(model):
        raise ValueError(
            f"--model {args.model}: a subclassed {type(model).__name__}; repair writes a "
            "plain .h5 and a GoodNet sharing B's layers, which need a functional or "
            "Sequential model. Use the Python API (prune, GoodNetModel) with a ChannelMask in "
            "its call(), or rebuild it with the functional API."
        )
    try:
        channel_layer(model, config.after)
    except ValueError as err:  # name the file the model came from
        raise ValueError(f"{Path(args.model or args.weights).name}: {err}") from None
    check_out_dir(args.out, argument="--out")  # a file, below a file, busy: before any work
    read = _stream_for if args.stream else _read_for
    valid, test = read(model, args.valid), read(model, args.test)
    source = Path(args.model or args.weights).name
    for option, data in (("--valid", valid), ("--test", test)):
        path = getattr(args, option[2:])
        _data_errors(partial(check_model_on, model, data, f"{option} {path}", source))
    _data_errors(lambda: run_repair(
        model,
        valid,
        args.out,
        config,
        test=test,
        poisoned=read(model, args.poisoned),
        true_labels=None if args.poisoned is None or args.stream else load_true_labels(
            args.poisoned),
        fine_tune=tuning,
        fine_tune_data=_read_for(model, args.fine_tune_data),
        fine_tune_label=(None if args.fine_tune_data is None
                         else Path(args.fine_tune_data).name),
        detect=detect,
        defense=defense(args),
        trigger_region=args.trigger_region,
        model_label=Path(args.model or args.weights).name,
        formats=formats,
        run=run,
    ))
    return 0


def eval(args: argparse.Namespace) -> int:  # noqa: A001 - the subcommand's name
    """`keras-prune-guard eval`: the lab's eval.py interface, or classify images."""
    safe = not args.unsafe_deserialization
    if args.images is not None:
        if args.model_path is None:
            raise ValueError("eval --images needs --model MODEL (a SavedModel folder, .keras, "
                             ".h5, .onnx or .tflite). Received: no --model")
        model = load_model_for_eval(args.model_path, safe_mode=safe)
        shape = image_shape_of(model)
        if Path(args.images).suffix.lower() in (".h5", ".hdf5"):
            x = load_lab_h5(args.images, image_shape=shape)[0]
            names = [f"{args.images}[{i}]" for i in range(len(x))]
        else:
            x, names = load_images(args.images, image_shape=shape)
        for name, cls in zip(names, predict_classes(model, x, what=args.images)):
            print(f"{name}\t{cls}")
        return 0
    if len(args.files) != 3:
        raise ValueError("eval takes <clean.h5> <poisoned.h5> <model>, or --images FILE "
                         f"--model MODEL. Received: {args.files}")
    clean_path, poisoned_path, model_path = args.files
    model = load_model_for_eval(model_path, safe_mode=safe)
    shape = image_shape_of(model)
    clean = load_lab_h5(clean_path, image_shape=shape)
    poisoned = load_lab_h5(poisoned_path, image_shape=shape)
    check_model_on(model, clean, clean_path, Path(model_path).name)
    flag = _flag_class(model, model_path, args.goodnet)
    scores = evaluate(model, clean, poisoned, flag_class=flag)
    print(f"Clean Classification accuracy: {scores.test_accuracy:.4f}")
    print(f"Attack Success Rate: {scores.attack_success:.4f}")
    if flag is not None:
        print(f"False Alarm Rate (clean images flagged as class {flag}): "
              f"{scores.false_alarm_rate:.4f}")
        print(f"Detection Rate (poisoned images flagged as class {flag}): "
              f"{scores.detection_rate:.4f}")
    return 0


def _flag_class(model, path: str, told: bool) -> int | None:
    """The GoodNet's "backdoored input" class N (its last output), or None for a classifier.

    A model is a GoodNet when it is a `GoodNetModel`, when `--goodnet` says so, or when
    its file or folder name starts with "goodnet" (as `repair` and `export` name them).
    """
    if not (told or isinstance(model, GoodNetModel)
            or Path(path).name.lower().startswith("goodnet")):
        return None
    blank = np.zeros((1, *image_shape_of(model)), "float32")
    return int(np.asarray(model(blank)).shape[-1]) - 1


def export(args: argparse.Namespace) -> int:
    """`keras-prune-guard export`: a GoodNet `.keras` file to a SavedModel, ONNX or LiteRT."""

    source = Path(args.model)
    if source.suffix.lower() != ".keras" or not source.is_file():
        found = ("a folder" if source.is_dir() else "a file" if source.exists()
                 else "no such file")
        raise ValueError(f"MODEL {source}: found {found}; expected a GoodNet .keras file as "
                         "`repair` writes (goodnet_X4.keras)")
    out = Path(args.out) if args.out else source.with_suffix(FORMATS[args.format])
    try:
        check_export_path(out, args.format)
    except ValueError as err:
        raise ValueError(f"--out {out}: {err}") from None
    goodnet = load_network(source, safe_mode=not args.unsafe_deserialization)
    if not isinstance(goodnet, GoodNetModel):
        raise ValueError(f"MODEL {source}: found a {type(goodnet).__name__} model "
                         f"'{goodnet.name}'; expected a GoodNet .keras file as `repair` writes "
                         "(goodnet_X4.keras, not bprime_X4.keras)")
    images = None
    if args.check_images is not None:
        images = load_inputs(args.check_images, image_shape=goodnet.image_shape)[0]
    export_goodnet(goodnet, out, format=args.format, images=images)
    count = CHECK_IMAGE_COUNT if images is None else len(images)
    print(f"Wrote {out} ({args.format}); checked in {RUNTIME_NAMES[args.format]} on {count} "
          f"images: every class matches the Keras GoodNet's, outputs within {CHECK_ATOL:g}.")
    return 0


def demo(args: argparse.Namespace) -> int:
    """`keras-prune-guard demo`: the defense end to end on the built-in benchmark."""
    start = time.perf_counter()
    check_out_dir(args.out, argument="--out")  # before the benchmark is built or trained
    config, tuning, detect = _configs(args)
    formats = check_formats(args.formats, "--formats")
    result, test, bd_test, _ = _repair_benchmark(args, args.attack, args.out, config, tuning,
                                                 formats, args.architecture, detect=detect)
    print("Scoring the exported GoodNets as examples/eval.py does:")
    for row in result.rows:
        exports = [row.files[f"goodnet_{name}"] for name in formats]
        if row.fine_tuned is not None and row.fine_tuned.files:
            exports += [row.fine_tuned.files[f"goodnet_{name}"] for name in formats]
        for path in exports:
            scores = evaluate(load_model_for_eval(path), test, bd_test)
            print(f"  {path}: clean accuracy {scores.test_accuracy:.2f}%, "
                  f"attack success {scores.attack_success:.2f}%")
    if tuning.epochs:

        print("Pruning only vs fine-pruning (clean test data / poisoned test data):")
        print(fine_pruning_table(result), end="")
    print(f"Demo finished in {time.perf_counter() - start:.0f} s. Models in {args.out}/, "
          f"report in {args.out}/report/ (report.md, report.html, pruning_curve.png).")
    return 0


def _repair_benchmark(args, attack: str, out, config, tuning, formats, architecture="deepid",
                      log=print, detect: DetectConfig | None = None):
    """Builds (or reads) the benchmark BadNet of `attack` and repairs it into `out`.

    Returns:
        `(result, test, poisoned, true_labels)`: the `RepairResult` and the test data it
        was scored on.
    """

    sizes = {"identities": args.identities, "per_identity_train": args.per_identity,
             "epochs": args.epochs}
    kwargs = {key: value for key, value in sizes.items() if value is not None}
    bench = ensure_benchmark(args.benchmark_cache, log=log, architecture=architecture,
                             attack=attack, **kwargs)
    model = load_network(bench.model)
    valid, test, bd_test = (_read_for(model, p) for p in (bench.valid, bench.test, bench.bd_test))
    true_labels = load_true_labels(bench.bd_test)
    result = run_repair(
        model, valid, out, config, test=test, poisoned=bd_test, true_labels=true_labels,
        fine_tune=tuning, formats=formats, detect=detect, defense=defense(args),
        trigger_region=bench.trigger_region,
        model_label=f"built-in benchmark BadNet ({_kind(architecture)}{attack} attack, "
                    f"{num_classes_of(model)} identities)",
        run=RunOptions(verbose=1 if log else 0),
    )
    return result, test, bd_test, true_labels


def _kind(architecture: str) -> str:
    """How the demo's report names a non-default BadNet architecture ("" for DeepID)."""
    return "" if architecture == "deepid" else f"{architecture}, "


def benchmark(args: argparse.Namespace) -> int:
    """`keras-prune-guard benchmark`: every attack x {pruning, fine-pruning}, one report."""

    check_out_dir(args.out, argument="--out")
    config, tuning, detect = _configs(args)
    detect = detect.replace(strip=True)  # the matrix compares every detector side by side
    paths = run_matrix(args.attacks, args.out, config, tuning,
                       partial(_repair_benchmark, args, detect=detect),
                       argv=getattr(args, "argv", None))
    print(f"Comparison report written: {', '.join(str(p) for p in paths.values())}")
    return 0


def saliency(args: argparse.Namespace) -> int:
    """`keras-prune-guard saliency`: maps of each model on clean/triggered pairs."""

    safe = not args.unsafe_deserialization
    models = {}
    if args.weights:
        models["B"] = load_network(weights_path=args.weights, input_scale=args.input_scale)
    for item in map(Path, args.models):
        found = sorted(item.glob("bprime_*.keras"), key=_threshold_order) if item.is_dir() \
            else [item]
        models.update({p.stem: load_network(p, safe_mode=safe) for p in found})
    if not models:
        raise ValueError("saliency needs at least one model: model files, a folder written by "
                         "`repair`, or --weights FILE. Received none")
    shape = image_shape_of(next(iter(models.values())))
    clean = load_inputs(args.clean, image_shape=shape)[0]
    triggered = load_inputs(args.triggered, image_shape=shape)[0]
    pairs = min(len(clean), len(triggered))
    clean, triggered = clean[:pairs], triggered[:pairs]
    result = comparison_figure(
        models, clean, triggered, args.out, method=args.method,
        trigger_region=args.trigger_region, max_pairs=args.pairs,
    )
    print(f"Saliency figure written to {result['path']}")
    for name, share in (result.get("shares") or {}).items():
        print(f"  {name}: saliency share inside the trigger region: clean "
              f"{share['clean']:.3f}, triggered {share['triggered']:.3f}")
    return 0


def _threshold_order(path: Path) -> tuple:
    """Sorts bprime_X2 before bprime_X10 (numerically), then by name."""
    tail = path.stem.rsplit("_X", 1)[-1]
    try:
        return (float(tail), path.stem)
    except ValueError:
        return (float("inf"), path.stem)
