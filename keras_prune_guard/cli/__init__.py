"""The `keras-prune-guard` command: parser (options read from the configs) and commands."""

from keras_prune_guard.cli.main import main

__all__ = ["main"]
