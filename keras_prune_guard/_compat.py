"""Every 0.1 spelling that still works, with its `DeprecationWarning` (all removed in 0.4).

The warnings name the new spelling. The call sites that accept an old spelling (positional
`x, y`, `cache_dir=`, `repair(log=)`, `evaluate(clean=)`, ...) call `deprecated` from here, and
names that left the package's top level in 0.3 are served by `package_getattr`.
"""

from __future__ import annotations

import importlib
import warnings

#: Names that 0.2 exported from `keras_prune_guard` and 0.3 keeps in their module only
#: (surgery internals, and the duplicate spelling of `rank_channels`).
MOVED_FROM_TOP = {
    "split_at_mask": "keras_prune_guard.model.surgery",
    "find_channel_mask": "keras_prune_guard.model.surgery",
    "pruned_copy": "keras_prune_guard.model.surgery",
    "strip_channel_mask": "keras_prune_guard.model.surgery",
    "channel_ranking": "keras_prune_guard.pruning.ranking",
    "save_plain_h5": "keras_prune_guard.deploy.export",
}


def deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Warns that `old` is an old spelling of `new` (a `DeprecationWarning`).

    Args:
        old: the spelling the caller used.
        new: the one to use instead.
        stacklevel: the frame the warning points at (3: the caller's caller).

    Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     deprecated("f(x, y)", "f((x, y))", stacklevel=2)
    >>> "use `f((x, y))`" in str(caught[0].message)
    True
    """
    warnings.warn(
        f"`{old}` is deprecated since keras-prune-guard 0.2 and will be removed in 0.4; "
        f"use `{new}` instead.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def package_getattr(name: str):
    """`keras_prune_guard.<name>` for a name that left the top level: warns, then returns it.

    Args:
        name: the attribute asked of the package.

    Returns:
        The object, from the module that now holds it.

    Raises:
        AttributeError: `name` was never a top-level name.
    """
    if name not in MOVED_FROM_TOP:
        raise AttributeError(f"module 'keras_prune_guard' has no attribute '{name}'")
    module = MOVED_FROM_TOP[name]
    warnings.warn(
        f"`keras_prune_guard.{name}` is internal since 0.3 and leaves the top level in 0.4; "
        f"import it from `{module}`.",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(module), name)


__all__ = ["MOVED_FROM_TOP", "deprecated", "package_getattr"]
