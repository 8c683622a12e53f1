"""Write files and folders so that a reader never sees a half-written one.

Every temporary entry is named `.tmp-<pid>-...` (or `.tmp-old-<pid>-<name>` for
a folder moved aside), beside its result, so it is never mistaken for a result
and `clean_stale` can tell the debris of a killed process from a write in
progress.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: How temporary entries start; nothing this package writes as a result does.
TMP_PREFIX = ".tmp-"
_TMP_NAME = re.compile(r"^\.tmp-(?P<old>old-)?(?P<pid>\d+)-(?P<rest>.+)$")
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths in one step (Linux `renameat2(RENAME_EXCHANGE)`).

    Returns `False`, having changed nothing, where the system or the file system
    cannot do it (another OS, an old libc or kernel, some network file systems).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, f"Could not swap {a} and {b}: {os.strerror(code)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `final`, renamed onto it on success.

    Write the file (or, with `is_dir=True`, the folder) at the yielded path.
    When the block ends without an exception the result replaces `final` in
    one rename; a folder that already stands at `final` is swapped with the new
    one in one step where the OS allows it (Linux `renameat2`), so `final` is
    never missing; elsewhere the old folder is first renamed to
    `.tmp-old-<pid>-<name>` and, should the process die between the two
    renames, `clean_stale` puts it back. When the block raises, or the process
    dies, `final` keeps its previous contents and the temporary path is removed
    (or, after a kill, left as a `.tmp-<pid>-*` name that is never mistaken for
    a result and that `clean_stale` removes).

    Args:
        final: where the result must end up.
        is_dir: the result is a folder (a SavedModel) rather than a file.
            Defaults to `False`.

    Yields:
        The temporary `Path` to write to; its suffix is that of `final`, so
        writers that pick a format from the extension (`.keras`, `.h5`) work.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> final = Path(tempfile.mkdtemp()) / "saved_models" / "report.json"
    >>> with atomic_path(final) as tmp:  # a `.tmp-<pid>-...` path beside `final`
    ...     size = tmp.write_text("{}")
    >>> final.read_text(), tmp.exists()
    ('{}', False)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(
        tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{final.name}-", dir=final.parent)
    )
    tmp = tmp_dir / f"payload{final.suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"Nothing was written to the temporary path {tmp} for {final}")
        if (is_dir or tmp.is_dir()) and final.exists():
            # After the swap `tmp` holds the old folder; the `finally` removes it.
            if not exchange(tmp, final):
                old = final.parent / f"{TMP_PREFIX}old-{os.getpid()}-{final.name}"
                _remove(old)
                os.replace(final, old)
                os.replace(tmp, final)  # a kill right before this: see clean_stale
                _remove(old)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (this process counts as alive)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # no cheap check: never touch another process's entries
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The package's own subfolders of an output folder, where `atomic_path` may leave
#: temporary entries besides the top of the folder (report writers write into `report/`).
OWN_SUBFOLDERS = ("report",)
# A run's staging folder: `.tmp-<pid>-run-<UTC time>-<pid>-<hex>` (outputs.RunFolder).
_STAGING_REST = re.compile(r"^run-\d{8}T\d{6}Z-(?P<pid>\d+)-[0-9a-f]+$")


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def own_temporary(path: Path) -> re.Match | None:
    """The name match when `path` is a temporary entry this package makes, else `None`.

    Ours are folders only: a run's staging folder `.tmp-<pid>-run-<run id>` (whose run
    id repeats the pid), an `atomic_path` folder `.tmp-<pid>-<name>-<suffix>` holding
    nothing but its `payload*`, or a folder moved aside as `.tmp-old-<pid>-<name>`.
    Files, symlinks and other `.tmp-*` names (a user's) are not ours.

    Args:
        path: an entry of an output folder.

    Returns:
        The match of the name (groups `old`, `pid`, `rest`), or `None`.
    """
    match = _TMP_NAME.match(path.name)
    if match is None or not _real_dir(path):
        return None
    if match["old"]:
        return match
    staging = _STAGING_REST.match(match["rest"])
    if staging is not None:
        return match if staging["pid"] == match["pid"] else None
    if "-" not in match["rest"]:
        return None
    try:
        children = os.listdir(path)
    except OSError:
        return None
    return match if all(name.startswith("payload") for name in children) else None


def clean_stale(folder: str | os.PathLike,
                subfolders: tuple[str, ...] = OWN_SUBFOLDERS) -> list[Path]:
    """Removes the temporary entries that killed writers of this package left in `folder`.

    Looks only where the package writes them: the top of `folder` and its own
    `subfolders` (`report/`), never any other subfolder (a user's data may sit there,
    and `--out ~` must not walk the home folder). Only entries `own_temporary`
    recognises whose process no longer runs are touched (entries of running
    processes, this one included, are left alone). A folder moved aside as
    `.tmp-old-<pid>-<name>` whose `<name>` is missing (the writer died between its
    two renames) is renamed back to `<name>`; the others are deleted. Process ids are
    only checked on this machine, so do not share one output folder between machines
    while they write to it.

    Args:
        folder: the output folder (it need not exist).
        subfolders: the package's own subfolders to look in too. Defaults to
            `OWN_SUBFOLDERS` ("report").

    Returns:
        The entries removed or restored (their temporary paths), sorted.

    Example:

    >>> import os
    >>> import tempfile
    >>> out = tempfile.mkdtemp()  # an output folder where the dead pid 999999999 was writing
    >>> os.makedirs(f"{out}/.tmp-999999999-goodnet_X4-k2j1x0/payload")
    >>> [path.name for path in clean_stale(out)], os.listdir(out)
    (['.tmp-999999999-goodnet_X4-k2j1x0'], [])
    """
    folder = Path(folder)
    if not _real_dir(folder):
        return []
    places = [folder, *(folder / name for name in subfolders if _real_dir(folder / name))]
    handled = []
    for place in places:
        for name in sorted(os.listdir(place)):
            path = place / name
            match = own_temporary(path)
            if match is None or alive(int(match["pid"])):
                continue
            target = place / match["rest"]
            if match["old"] and not target.exists() and not target.is_symlink():
                os.replace(path, target)
            else:
                _remove(path)
            handled.append(path)
    return sorted(handled)
