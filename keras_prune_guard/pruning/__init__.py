"""Activations -> ranking -> sweep (fast, whole-model) -> prune()."""
