"""The docstring examples run: every `>>>` of the cheap modules, as `doctest` sees it.

Each module's examples take at most a couple of seconds (tiny untrained DeepIDs, 8 random
images, benchmark folders of 5 identities); the few that train for real or fill the
benchmark cache are marked `# doctest: +SKIP` in the docstring. Files are written only
under `tempfile.mkdtemp()`, which points into pytest's `tmp_path` here.

Self-contained: an example sees only the names its module defines (or lists in
`__all__`), never the module's own imports, so it imports `numpy`, `keras` or
`deepid` itself, as a reader copying it would have to.
"""

from __future__ import annotations

import doctest
import importlib
import tempfile
import types

import pytest

MODULES = [
    "keras_prune_guard.config",
    "keras_prune_guard.layers",
    "keras_prune_guard.callbacks",
    "keras_prune_guard.data.checks",
    "keras_prune_guard.data.distribute",
    "keras_prune_guard.data.files",
    "keras_prune_guard.pruning.activations",
    "keras_prune_guard.pruning.ranking",
    "keras_prune_guard.pruning.steps",
    "keras_prune_guard.pruning.sweep",
    "keras_prune_guard.pruning.sweep_whole",
    "keras_prune_guard.pruning.prune",
    "keras_prune_guard.defend.anp",
    "keras_prune_guard.defend.choice",
    "keras_prune_guard.defend.finetune",
    "keras_prune_guard.defend.gates",
    "keras_prune_guard.defend.masks",
    "keras_prune_guard.defend.rnp",
    "keras_prune_guard.defend.schedules",
    "keras_prune_guard.defend.train",
    "keras_prune_guard._fs.atomic",
    "keras_prune_guard._fs.paths",
    "keras_prune_guard._fs.outputs",
    "keras_prune_guard.model.graph",
    "keras_prune_guard.model.surgery",
    "keras_prune_guard.model.fold",
    "keras_prune_guard.model.loading",
    "keras_prune_guard.benchmark",
    "keras_prune_guard.benchmark.architectures",
    "keras_prune_guard.benchmark.attacks",
    "keras_prune_guard.benchmark.badnet",
    "keras_prune_guard.benchmark.cache",
    "keras_prune_guard.benchmark.dataset",
    "keras_prune_guard.benchmark.faces",
    "keras_prune_guard.benchmark.trigger",
    "keras_prune_guard.detect.scores",
    "keras_prune_guard.detect.calibrate",
    "keras_prune_guard.detect.roc",
    "keras_prune_guard.detect.figures",
    "keras_prune_guard.detect.strip",
]
#: Modules whose examples still lean on the module's own imports (`np`): run with the
#: module's globals, as plain `doctest.testmod` does.
MODULE_GLOBALS = {"keras_prune_guard.detect.scores", "keras_prune_guard.detect.calibrate",
                  "keras_prune_guard.detect.roc", "keras_prune_guard.detect.figures",
                  "keras_prune_guard.detect.strip"}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def own_names(module: types.ModuleType) -> dict:
    """The module's globals without what it imported (modules, others' functions and classes).

    A name the module re-exports in `__all__` counts as its own.
    """
    public = set(getattr(module, "__all__", ()))
    names = {}
    for name, value in vars(module).items():
        if isinstance(value, types.ModuleType):
            continue
        if isinstance(value, (type, types.FunctionType)) and name not in public \
                and value.__module__ != module.__name__:
            continue
        names[name] = value
    return names


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray relative path lands here, not in the repo
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp() folders too
    module = importlib.import_module(name)
    globs = None if name in MODULE_GLOBALS else own_names(module)
    result = doctest.testmod(module, globs=globs, optionflags=FLAGS, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
