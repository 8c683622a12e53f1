"""What machine a benchmark ran on: CPU model, cores, versions, load (shared by the scripts)."""

from __future__ import annotations

import os
import platform


def machine(*modules: str) -> dict:
    """The CPU, core count, Python/TensorFlow/Keras versions (and `modules`'), load average.

    Example:

    >>> machine("onnxruntime")["cores"]
    2
    """
    import keras
    import tensorflow as tf

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    for name in modules:
        try:
            versions[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            versions[name] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            **versions, "load_average": [round(v, 2) for v in os.getloadavg()]}
