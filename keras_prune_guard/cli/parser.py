"""`keras-prune-guard` command line: parse, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import dataclasses

from keras_prune_guard.benchmark.architectures import BADNET_ARCHITECTURES
from keras_prune_guard.benchmark.attacks import ATTACKS
from keras_prune_guard.config import DefenseConfig, DetectConfig, FineTuneConfig, PruneConfig
from keras_prune_guard.deploy.export import FORMATS

EPILOG = """examples:
  keras-prune-guard demo
  keras-prune-guard demo --attack patch
  keras-prune-guard demo --fine-tune-epochs 0      # pruning only
  keras-prune-guard demo --architecture resnet
  keras-prune-guard benchmark
  keras-prune-guard repair --weights data/bd_weights.h5 --valid data/cl/valid.h5 \\
      --test data/cl/test.h5 --poisoned data/bd/bd_test.h5 --out saved_models
  keras-prune-guard repair --weights data/bd_weights.h5 --valid big_valid.h5 --stream \\
      --activation-cache /scratch --strategy mirrored --out saved_models
  keras-prune-guard eval data/cl/test.h5 data/bd/bd_test.h5 saved_models/goodnet_X4
"""


# Defaults and choices come from the configuration (config.py imports no Keras).
#: 0.1 option spellings still accepted for this release (one line on stderr).
RENAMED_OPTIONS = {"--cache-dir": "--benchmark-cache"}


def _thresholds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--thresholds takes numbers (percentage points), e.g. 2 4 10. Received: {text!r}"
        ) from None


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            "--trigger-region takes ROW_START,ROW_STOP,COL_START,COL_STOP (stops exclusive), "
            f"e.g. 15,35,0,47. Received: {text!r}"
        )
    return values


def _epochs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"--fine-tune-epochs takes a whole number >= 0, e.g. 5. Received: {text!r}"
        )
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"--fine-tune-lr takes a positive number, e.g. 1e-4. Received: {text!r}"
        )
    return value


# Options whose text needs more than a type to check (the rest: int, str, bool, choices).
_PARSERS = {"thresholds": _thresholds, "epochs": _epochs, "learning_rate": _learning_rate,
            "schedules": str}


def _default_text(value) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def add_config_args(p: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One option per field of the configuration `cls`, from its field metadata.

    A new `PruneConfig` field with `metadata={"help": ...}` is a new CLI option: nothing
    here names the fields. Values are checked by the configuration's constructor.
    """

    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = meta.get("cli", "--" + f.name.replace("_", "-"))
        kwargs = {"dest": prefix + f.name, "default": f.default,
                  "help": f"{meta.get('help', '')} (default: {_default_text(f.default)})"}
        if isinstance(f.default, bool):  # --x / --no-x for the flags on by default or negatable
            negatable = f.default or meta.get("negatable", False)
            kwargs["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
        else:
            kwargs["type"] = _PARSERS.get(f.name, type(f.default) if f.default is not None
                                          else str)
            if isinstance(f.default, tuple):
                kwargs.update(nargs="+", type=_PARSERS[f.name], default=list(f.default))
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
        p.add_argument(flag, **kwargs)


def config_from_args(cls, args: argparse.Namespace, prefix: str = ""):
    """The configuration `cls` built (and so checked) once from the parsed options."""

    values = {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _add_fine_tune_args(p: argparse.ArgumentParser, data: bool) -> None:
    add_config_args(p, FineTuneConfig, prefix="fine_tune_")
    if data:
        p.add_argument("--fine-tune-data", default=None, metavar="FILE",
                       help="clean labelled data (lab HDF5) to fine-tune on (default: the "
                       "--valid data, as the Fine-Pruning paper does); needs "
                       "--fine-tune-epochs")




def _add_benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark-cache", "--cache-dir", dest="benchmark_cache", default=None,
                   help="where generated data and the trained BadNets are cached (default: "
                   "$KERAS_PRUNE_GUARD_CACHE or ~/.cache/keras-prune-guard; --cache-dir is "
                   "its deprecated 0.1 name)")
    p.add_argument("--identities", type=int, default=None,
                   help="number of face identities (classes) of the benchmark (default: 200)")
    p.add_argument("--per-identity", type=int, default=None,
                   help="training faces per identity (default: 25)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of BadNet training (default: 12)")


def _add_formats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", nargs="+", default=["savedmodel"], choices=tuple(FORMATS),
                   help="GoodNet exports to write per X, each checked in its runtime: "
                   "savedmodel = goodnet_X{X}/, onnx = goodnet_X{X}.onnx (extra [onnx]), "
                   "litert = goodnet_X{X}.tflite (extra [litert]) (default: savedmodel)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="full model file (.h5 or .keras), the backdoored network B")
    src.add_argument("--weights", help="weights-only .h5 file (the lab's bd_weights.h5) for "
                     "--architecture")
    p.add_argument("--architecture", default="deepid", choices=["deepid"],
                   help="architecture the --weights belong to (default: deepid, the lab's "
                   "network; the number of classes is read from the weights)")
    p.add_argument("--input-scale", default="raw", choices=["raw", "unit"],
                   help="pixel range B expects: raw 0..255 (the lab3 network) or unit = "
                   "pixels/255 (the hackml2020 networks). Files are always read as raw "
                   "0..255 and every model written takes raw pixels (default: raw)")
    p.add_argument("--unsafe-deserialization", action="store_true",
                   help="allow model files that run code when loaded (Lambda layers); only "
                   "for files you trust (default: refused)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keras-prune-guard` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keras-prune-guard",
        description="Repair backdoored Keras classifiers with the pruning defense and "
        "flag triggered inputs (CSAW-HackML lab 3).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole defense on the built-in face benchmark")
    demo.add_argument("--out", default="saved_models", help="output folder (default: "
                      "saved_models)")
    _add_benchmark_args(demo)
    demo.add_argument("--attack", default="sunglasses", choices=ATTACKS,
                      help="the backdoor: sunglasses (the lab's trigger), patch (a 5x5 "
                      "checkerboard in the bottom-right corner), blend (a fixed random "
                      "pattern blended into the whole image at 20%%) or pruning-aware (the "
                      "sunglasses learnt by the Fine-Pruning paper's adaptive attack, DeepID "
                      "only); each BadNet is trained and cached apart (default: sunglasses)")
    add_config_args(demo, PruneConfig)
    _add_formats(demo)
    demo.add_argument("--architecture", default="deepid", choices=list(BADNET_ARCHITECTURES),
                      help="network the benchmark backdoors: deepid (the lab's network) or "
                      "resnet (a small ResNet: BatchNorm, residual adds, a global average "
                      "pool feeding the classifier); each is trained and cached apart "
                      "(default: deepid)")
    _add_fine_tune_args(demo, data=False)
    add_config_args(demo, DetectConfig)
    add_config_args(demo, DefenseConfig, prefix="defense_")

    bench = sub.add_parser(
        "benchmark", help="every attack x {pruning, fine-pruning} on the built-in benchmark, "
        "one comparison report",
        description="For each attack: build (or read from the cache) its BadNet, repair it at "
        "every X with pruning and fine-pruning, score B, B', G, B'' and G'' on the test "
        "faces, check every figure against the saved models' own predictions, and write "
        "OUT/<attack>/ (models and report) and OUT/comparison.{md,html,png,json}.",
    )
    bench.add_argument("--out", default="benchmark_results", help="output folder (default: "
                       "benchmark_results)")
    _add_benchmark_args(bench)
    bench.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS,
                       help=f"attacks to run (default: {' '.join(ATTACKS)})")
    add_config_args(bench, PruneConfig)
    _add_fine_tune_args(bench, data=False)
    add_config_args(bench, DetectConfig)
    add_config_args(bench, DefenseConfig, prefix="defense_")

    rep = sub.add_parser(
        "repair", help="prune B on clean validation data, write B', GoodNets and the report",
        description="Rank the channels after --after by mean activation on --valid, prune "
        "them one at a time (least active first) and keep B' the first time validation "
        "accuracy is at least X points below the original, for each X. Writes, per X: "
        "bprime_X{X}.keras, bprime_X{X}.h5 (mask folded in, plain Keras), goodnet_X{X}/ "
        "(SavedModel) and goodnet_X{X}.keras; and report/ (Markdown, CSV, JSON, PNG, HTML). "
        "Then each B' is fine-pruned (its own copies trained on clean data, the schedule "
        "chosen on held-out clean data alone) into B'', written with its GoodNet as "
        "bprime_ft_X{X}.* and goodnet_ft_X{X}*; --fine-tune-epochs 0 prunes only.",
    )
    _add_model_args(rep)
    rep.add_argument("--valid", required=True, help="clean validation data, lab HDF5 layout "
                     "(data (N,3,H,W), label)")
    add_config_args(rep, PruneConfig)
    rep.add_argument("--test", default=None, help="clean test data (lab HDF5) to score B, "
                     "each B' and each GoodNet")
    rep.add_argument("--poisoned", default=None, help="poisoned test data (lab HDF5; label = "
                     "attacker's target) for the attack success rate")
    rep.add_argument("--trigger-region", type=_region, default=None,
                     help="ROW_START,ROW_STOP,COL_START,COL_STOP of the trigger, for the "
                     "saliency share (the lab's sunglasses: 15,35,0,47)")
    rep.add_argument("--out", default="saved_models", help="output folder (default: "
                     "saved_models)")
    rep.add_argument("--stream", action="store_true",
                     help="read --valid, --test and --poisoned through tf.data in batches "
                     "instead of loading them into memory (for validation sets larger than "
                     "memory; only the activations entering the mask are kept)")
    rep.add_argument("--activation-cache", default=None, metavar="DIR",
                     help="keep the sweep's cached activations (4,800 bytes per image on "
                     "the lab's DeepID) in a memory-mapped file in DIR instead of RAM; the "
                     "file is deleted afterwards (default: in RAM)")
    rep.add_argument("--strategy", default="none", choices=["none", "mirrored"],
                     help="run the passes over the data under tf.distribute: mirrored = "
                     "MirroredStrategy over every local GPU (the CPU when there is none); "
                     "results equal the single-device run (default: none)")
    _add_formats(rep)
    _add_fine_tune_args(rep, data=True)
    add_config_args(rep, DetectConfig)
    add_config_args(rep, DefenseConfig, prefix="defense_")

    ev = sub.add_parser(
        "eval", help="score a model as the lab's eval.py does, or classify images",
        description="With a clean and a poisoned HDF5 file and a model (SavedModel folder, "
        ".keras, .h5, .onnx or .tflite): prints clean classification accuracy and attack "
        "success rate. With --images: prints each image's class in [0, N], N meaning "
        "'backdoored input'.",
    )
    ev.add_argument("files", nargs="*", help="<clean.h5> <poisoned.h5> <model>")
    ev.add_argument("--images", default=None, help="an image file, a folder of images or an "
                    "HDF5 file to classify")
    ev.add_argument("--model", dest="model_path", default=None, help="model for --images")
    ev.add_argument("--unsafe-deserialization", action="store_true",
                    help="allow model files that run code when loaded")
    ev.add_argument("--goodnet", action="store_true",
                    help="the model is a GoodNet (its last class N means 'backdoored input'): "
                    "also print the false-alarm rate on the clean file and the detection "
                    "rate on the poisoned file (default: on for GoodNet .keras files and for "
                    "models whose name starts with goodnet, as repair and export write them)")

    exp = sub.add_parser(
        "export", help="write a GoodNet for deployment: SavedModel, ONNX or LiteRT, self-checked",
        description="Convert a GoodNet .keras file (as `repair` writes: goodnet_X4.keras) to a "
        "SavedModel folder, an ONNX file (standard ops, for onnxruntime) or a LiteRT file "
        "(built-in ops only, for ai_edge_litert). The result is loaded in its runtime and "
        "must give the Keras GoodNet's class for every check image, with outputs within "
        "1e-5, before it is renamed into place; otherwise nothing is written (exit 2). "
        "Example: keras-prune-guard export saved_models/goodnet_X4.keras --format onnx",
    )
    exp.add_argument("model", metavar="MODEL", help="a GoodNet .keras file")
    exp.add_argument("--format", default="savedmodel", choices=["savedmodel", "onnx", "litert"],
                     help="savedmodel = a folder (tf.saved_model.load), onnx = .onnx "
                     "(onnxruntime; extra [onnx]), litert = .tflite (ai_edge_litert; extra "
                     "[litert]) (default: savedmodel)")
    exp.add_argument("--out", default=None, metavar="PATH",
                     help="where to write (default: MODEL without .keras, plus .onnx or "
                     ".tflite: goodnet_X4/, goodnet_X4.onnx, goodnet_X4.tflite)")
    exp.add_argument("--check-images", default=None, metavar="FILE",
                     help="images to check the export on (lab HDF5, an image or a folder; "
                     "default: 8 seeded images, noise and gradients)")
    exp.add_argument("--unsafe-deserialization", action="store_true",
                     help="allow model files that run code when loaded")

    sal = sub.add_parser("saliency", help="saliency maps of B and B' on clean/triggered pairs")
    sal.add_argument("models", nargs="*", help="full model files (.keras, .h5); a folder "
                     "written by `repair` stands for every bprime_*.keras in it")
    sal.add_argument("--weights", default=None, help="also show B from a weights-only .h5 "
                     "(the lab's bd_weights.h5; --architecture deepid)")
    sal.add_argument("--input-scale", default="raw", choices=["raw", "unit"],
                     help="pixel range the --weights network expects (default: raw)")
    sal.add_argument("--clean", required=True, help="clean images (HDF5, image file or folder)")
    sal.add_argument("--triggered", required=True, help="the same faces with the trigger, "
                     "row i the twin of clean row i (extra rows of the longer set are unused)")
    sal.add_argument("--trigger-region", type=_region, default=None,
                     help="ROW_START,ROW_STOP,COL_START,COL_STOP (e.g. 15,35,0,47)")
    sal.add_argument("--method", default="saliency", choices=["saliency", "smoothgrad",
                     "gradcam"], help="map method (default: saliency)")
    sal.add_argument("--pairs", type=int, default=4, help="pairs to draw (default: 4)")
    sal.add_argument("--out", default="saliency.png", help="output PNG (default: "
                     "saliency.png)")
    sal.add_argument("--unsafe-deserialization", action="store_true",
                     help="allow model files that run code when loaded")
    return parser
