"""Saying what is wrong with a path in a few words: missing, a symlink loop, below a file.

`Path.exists()` answers `False` for a missing file, a broken symlink, a symlink loop and
a path through a file alike; the messages of this package tell them apart.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def path_problem(path: str | os.PathLike) -> str | None:
    """Returns why `path` cannot be reached, or `None` when it exists (symlinks followed).

    Args:
        path: any path.

    Returns:
        `None`, or one of "no such file", "a broken symlink (to '...', which does not
        exist)", "a symlink loop (... -> ...)", "no such file (... is a file, not a
        folder)" or "unreadable (<reason>)".

    Example:

    >>> import os
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.symlink("loop.keras", f"{folder}/loop.keras")
    >>> path_problem(f"{folder}/loop.keras")
    "a symlink loop (.../loop.keras -> 'loop.keras')"
    >>> path_problem(f"{folder}/missing.keras")
    'no such file'
    """
    p = Path(os.fspath(path))
    try:
        os.stat(p)
        return None
    except FileNotFoundError:
        if p.is_symlink():
            return f"a broken symlink (to {os.readlink(p)!r}, which does not exist)"
        return "no such file"
    except NotADirectoryError:
        blocker = file_above(p)
        return "no such file" if blocker is None else (
            f"no such file ({blocker} is a file, not a folder)")
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"a symlink loop ({_loop_text(p)})"
        return f"unreadable ({err.strerror})"


def file_above(path: str | os.PathLike) -> Path | None:
    """The nearest ancestor of `path` that exists and is not a folder, if any.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> report = Path(tempfile.mkdtemp()) / "report.md"
    >>> size = report.write_text("# Report")
    >>> file_above(report / "sub" / "dir") == report
    True
    """
    for parent in Path(os.fspath(path)).parents:
        try:
            if os.path.exists(parent):
                return None if os.path.isdir(parent) else parent
        except OSError:
            return None
    return None


def _loop_text(p: Path) -> str:
    """`a -> 'b'` for the first symlink on `p` (itself or an ancestor) that loops."""
    for candidate in (p, *p.parents):
        if candidate.is_symlink():
            try:
                os.stat(candidate)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    return f"{candidate} -> {os.readlink(candidate)!r}"
    return str(p)
