"""`main`: parse the arguments, run one command, turn a bad input into one line and exit 2."""

from __future__ import annotations

import os
import sys

# Quiet TensorFlow's C++ start-up chatter for CLI users (only here, never on a library import):
# it must be set before TensorFlow loads, which the imports below do.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import absl.logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_prune_guard.cli import commands  # noqa: E402
from keras_prune_guard.cli.parser import RENAMED_OPTIONS, build_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keras-prune-guard` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for old, new in RENAMED_OPTIONS.items():
        if any(a == old or a.startswith(old + "=") for a in argv):
            print(f"keras-prune-guard: warning: {old} is deprecated since 0.2; use {new}",
                  file=sys.stderr)
    args = build_parser().parse_args(argv)
    args.argv = argv
    tf.get_logger().setLevel("ERROR")  # retracing notes are not the user's concern
    absl.logging.set_verbosity(absl.logging.ERROR)  # nor Keras's "legacy .h5" note
    try:
        return getattr(commands, args.command)(args)
    except (ValueError, OSError) as err:
        print(f"keras-prune-guard {args.command}: error: {err}", file=sys.stderr)
        return 2

