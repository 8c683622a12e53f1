"""Write files and folders so that a reader never sees a half-written one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `final`, renamed onto it on success.

    Write the file (or, with `is_dir=True`, the folder) at the yielded path.
    When the block ends without an exception the result replaces `final` in
    one rename (a folder that already stands at `final` is moved aside first
    and removed afterwards); when it raises, or the process dies, `final` keeps
    its previous contents and the temporary path is removed (or, after a
    kill, left as a `.tmp-*` name that is never mistaken for a result).

    Args:
        final: where the result must end up.
        is_dir: the result is a folder (a SavedModel) rather than a file.
            Defaults to `False`.

    Yields:
        The temporary `Path` to write to; its suffix is that of `final`, so
        writers that pick a format from the extension (`.keras`, `.h5`) work.

    Example:

    >>> with atomic_path("saved_models/report.json") as tmp:
    ...     tmp.write_text("{}")
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp = tmp_dir / f"payload{final.suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"Nothing was written to the temporary path {tmp} for {final}")
        if is_dir or tmp.is_dir():
            old = None
            if final.exists():
                old = final.parent / f".tmp-old-{final.name}-{os.getpid()}"
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
