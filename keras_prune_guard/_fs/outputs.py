"""One run owns an output folder: checked, locked, staged, then committed as a whole.

The design, and why the folder always holds one run's complete output:

- `manifest.json`, at the top of the output folder, is its table of contents: the id
  of the run that wrote the folder and every file (size, sha256) and folder that run
  wrote. `verify_folder` checks a folder against it.
- A run (`run_folder`) first checks the path (`check_out_dir`, also callable on its
  own before any long computation), then locks the folder with `flock` on the folder
  itself (so the lock adds no file; the kernel drops it when the process dies). A
  second run fails at once, naming the first run's pid, read from the name of its
  staging folder `.tmp-<pid>-run-<run id>/`.
- Every file of the run is written into that staging folder. Its `.tmp-<pid>-` name
  is never mistaken for a result, and `atomic.clean_stale` removes it once the pid
  is dead, so a run killed before its commit leaves the previous output untouched.
- `RunFolder.commit` writes `manifest.json` into the staging folder (every file
  hashed and fsynced first), then renames the staging folder to
  `.keras-prune-guard-commit/`: one rename, the commit point. It then rolls
  forward: each entry is moved into place (a file by one `os.replace`, a folder
  swapped with `renameat2(RENAME_EXCHANGE)` where Linux allows it), entries of the
  previous run that this run did not write are removed, `manifest.json` is renamed
  into place last, and the commit folder is removed. Each step is idempotent (an
  entry whose files already match the new manifest is skipped), so a commit killed
  anywhere is finished by the same code: the next run on the folder, or `recover`,
  does it before anything else.

So at every instant the folder is in one of three states that `verify_folder` tells
apart: the previous run complete (its manifest, no commit folder), the new run
complete (the new manifest, no commit folder), or "commit of run <id> in progress or
interrupted" (the commit folder exists), which `eval` refuses and the next run
completes. Each file and SavedModel is also whole at every instant (one rename), so
even a reader that ignores the manifest never reads half a model.

Files of the user: the package deletes only files whose path and bytes (size, sha256)
a manifest of its own lists (the previous run's, or this run's). Anything else in the
way of an entry (a user's file inside `goodnet_X2/`, a user's file at a name the run
writes, a listed file someone changed since, the output of a version without
manifests) is moved, never deleted: into the new folder at the same place, or, where
a file of the run takes that place, to `kept-<run id>/`; every move is logged. Other
entries of the folder are never touched.

Paths: every path a manifest or the commit folder names is resolved and must lie inside
the output folder (no absolute path, no `..`, no reserved name, no symlink leading out);
otherwise `UnsafePathError` names the entry and nothing is moved or deleted. A malformed
manifest is never trusted: nothing it lists counts as the package's own, and the next
commit keeps a copy of it in `kept-<run id>/`.

Limits: process ids are checked on this machine only (do not share one folder
between machines while they write to it); where `flock` is missing (Windows, some
network file systems) the run warns and goes on unlocked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from keras_prune_guard._fs.atomic import TMP_PREFIX, alive, clean_stale, exchange
from keras_prune_guard._fs.paths import file_above, path_problem

#: The file listing a folder's run: its id and every file and folder it wrote.
MANIFEST = "manifest.json"
#: The staging folder of a run that passed its commit point (see the module docstring).
COMMIT_DIR = ".keras-prune-guard-commit"
#: Where entries in a run's way go (`kept-<run id>/`), never deleted.
KEPT_PREFIX = "kept-"
_FORMAT = "keras-prune-guard output folder"
_STAGING = re.compile(r"^\.tmp-(?P<pid>\d+)-run-(?P<run>.+)$")
_ASIDE = ".replaced"  # inside the commit folder: old folders moved aside (no renameat2)
_EXPECTED = "a folder (an existing one, or a path where one can be created)"

Log = Callable[[str], None]


class OutputFolderError(ValueError):
    """The output folder cannot be used: a file, below a file, not writable, busy, mixed."""


class FolderBusyError(OutputFolderError):
    """Another run holds the output folder.

    Attributes:
        pid: the other run's process id, or `None` when it could not be read.
    """

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class UnsafePathError(OutputFolderError):
    """A manifest or commit folder names a path that is not inside its output folder.

    An absolute path, a `..`, a name the package reserves, or a symlink leading out of
    the folder: refused before anything is moved or deleted.

    Attributes:
        entry: the offending path, as written in the manifest (or the folder's name).
    """

    def __init__(self, message: str, entry: str):
        super().__init__(message)
        self.entry = entry


class ManifestError(OutputFolderError):
    """A folder (or a model in it) does not match its manifest, or has none.

    Attributes:
        problems: one short line per missing or mismatched file.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclasses.dataclass(frozen=True)
class Verified:
    """A folder (or one entry of it) that matches its manifest.

    Attributes:
        run_id: the run that wrote it.
        files: how many files were checked.
        folder: the output folder.
    """

    run_id: str
    files: int
    folder: Path

    def __str__(self) -> str:
        return f"complete run {self.run_id} ({self.files} files)"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "files": self.files, "folder": str(self.folder)}


# --- checking the path, before any work ---------------------------------------------------


def check_out_dir(out_dir: str | os.PathLike, *, argument: str = "out_dir") -> Path:
    """Checks that `out_dir` can be a run's output folder; creates and locks nothing.

    Call it before any long computation (the CLI does, before reading data), so a bad
    `--out` fails in a second rather than after the sweep.

    Args:
        out_dir: the output folder (it need not exist).
        argument: how to name it in messages. Defaults to "out_dir" (the CLI: "--out").

    Returns:
        `Path(out_dir)`.

    Raises:
        OutputFolderError: (a `ValueError`) it is a file, lies below a file, is a
            broken symlink or a symlink loop, or cannot be written or created.
        FolderBusyError: another run holds it now.
        UnsafePathError: its manifest or commit folder names a path outside it.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> report = Path(tempfile.mkdtemp()) / "report.md"
    >>> size = report.write_text("x" * 812)
    >>> check_out_dir(report, argument="--out")
    Traceback (most recent call last):
        ...
    keras_prune_guard._fs.outputs.OutputFolderError: --out .../report.md: found an existing file
    (812 bytes); expected a folder ...
    """
    out = _check_path(Path(os.fspath(out_dir)), argument)
    if out.is_dir():
        fd = _lock(out, argument, log=lambda text: None)
        _unlock(fd)
        check_manifest_paths(out)
    return out


def _check_path(out: Path, argument: str) -> Path:
    def fail(found: str, expected: str = _EXPECTED) -> OutputFolderError:
        return OutputFolderError(f"{argument} {out}: found {found}; expected {expected}.")

    problem = path_problem(out)
    if problem is None:
        if not out.is_dir():
            raise fail(f"an existing file ({out.stat().st_size} bytes)")
        if not os.access(out, os.R_OK | os.W_OK | os.X_OK):
            raise fail("a folder you cannot write to", "a folder you can write to")
        return out
    blocker = file_above(out)
    if blocker is not None:
        raise fail(f"that {blocker} is a file, so no folder can be created below it")
    if problem != "no such file":
        raise fail(problem)
    parent = next((p for p in out.parents if p.is_dir()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail(f"that {parent} is not writable, so {out} cannot be created in it",
                   "a folder you can write to")
    return out


# --- the lock --------------------------------------------------------------------------------


def _lock(out: Path, argument: str, log: Log) -> int | None:
    """Locks `out` (flock on the folder itself); `None` where the system cannot."""
    try:
        import fcntl  # posix only: elsewhere the folder is not locked
    except ImportError:  # Windows
        log(f"Warning: {argument} {out}: no flock on this system, so nothing stops two runs "
            "from writing this folder at once; run one at a time.")
        return None
    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(out, argument) from None
    except OSError as err:  # ENOLCK, EOPNOTSUPP: some network file systems
        os.close(fd)
        log(f"Warning: {argument} {out}: cannot lock it ({err.strerror}), so nothing stops "
            "two runs from writing this folder at once; run one at a time.")
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def _busy(out: Path, argument: str) -> FolderBusyError:
    pid = _holder(out)
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return FolderBusyError(
        f"{argument} {out}: another keras-prune-guard run ({who}) is writing to this folder; "
        f"expected a folder no other run is using (wait for it to end, or choose another "
        f"{argument}).",
        pid,
    )


def _holder(out: Path, attempts: int = 20) -> int | None:
    """The pid of the run holding `out`: from its staging folder's name, or its commit."""
    for _ in range(attempts):  # the holder makes its staging folder right after locking
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(out)):
                match = _STAGING.match(name)
                if match and alive(int(match["pid"])):
                    return int(match["pid"])
        pending = _read_json(out / COMMIT_DIR / MANIFEST)
        if pending and isinstance(pending.get("pid"), int) and alive(pending["pid"]):
            return pending["pid"]
        time.sleep(0.05)
    return None


# --- a run ------------------------------------------------------------------------------------


class RunFolder:
    """The output folder of one run: a staging folder to write into, and the commit.

    Made by `run_folder`; write every file below `staging`, then call `commit()`.

    Attributes:
        out_dir: the output folder, as given.
        staging: the run's private folder, `out_dir/.tmp-<pid>-run-<run id>/`.
        run_id: `<UTC time>-<pid>-<random>`, recorded in the manifest.
        committed: the `Verified` result once `commit()` has run, else `None`.
    """

    def __init__(self, out_dir: Path, log: Log):
        self.out_dir = out_dir
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-" \
                      f"{secrets.token_hex(2)}"
        self.staging = out_dir / f"{TMP_PREFIX}{os.getpid()}-run-{self.run_id}"
        self.staging.mkdir()
        self.committed: Verified | None = None
        self._log = log

    def final(self, staged):
        """Where a path below `staging` (or each value of a dict of them) ends up.

        Example:

        >>> import tempfile
        >>> with run_folder(f"{tempfile.mkdtemp()}/saved_models") as run:
        ...     final = run.final(run.staging / "bprime_X2.keras")
        >>> final.parts[-2:]
        ('saved_models', 'bprime_X2.keras')
        """
        if isinstance(staged, Mapping):
            return {key: self.final(value) for key, value in staged.items()}
        return self.out_dir / Path(staged).relative_to(self.staging)

    def commit(self) -> Verified:
        """Publishes the staging folder as the folder's output (see the module docstring).

        Returns:
            The `Verified` folder.

        Raises:
            OutputFolderError: a reserved name or a symlink in the staging folder, or
                `commit()` called twice.
        """
        if self.committed is not None or not self.staging.is_dir():
            raise OutputFolderError(f"{self.out_dir}: run {self.run_id} is already committed.")
        check_manifest_paths(self.out_dir)  # before the commit point, so nothing is stuck
        manifest = _manifest_of(self.staging, self.run_id)
        _write_json(self.staging / MANIFEST, manifest)
        _fsync_dir(self.staging)
        _move(self.staging, self.out_dir / COMMIT_DIR)  # the commit point
        _fsync_dir(self.out_dir)
        _apply(self.out_dir, self._log)
        self.committed = verify_folder(self.out_dir)
        self._log(f"Committed run {self.run_id} to {self.out_dir}/: {len(manifest['entries'])} "
                  f"entries, {self.committed.files} files, listed in {MANIFEST}")
        return self.committed


@contextlib.contextmanager
def run_folder(
    out_dir: str | os.PathLike, *, argument: str = "out_dir", log: Log = print
) -> Iterator[RunFolder]:
    """Owns `out_dir` for one run: checked, locked, cleaned, staged; commit at the end.

    On entry: checks the path, creates the folder, locks it (a second run fails at
    once), finishes a commit a killed run left, removes dead runs' `.tmp-*`
    leftovers and makes the staging folder. On exit: releases the lock; without
    `commit()` (an exception), the staging folder is removed and the folder keeps
    its previous output (a folder this call created is removed again if empty).

    Args:
        out_dir: the output folder.
        argument: how to name it in messages. Defaults to "out_dir".
        log: progress printer. Defaults to `print`.

    Yields:
        The `RunFolder`.

    Raises:
        OutputFolderError, FolderBusyError: see `check_out_dir`.

    Example:

    >>> import os
    >>> import tempfile
    >>> out = f"{tempfile.mkdtemp()}/saved_models"
    >>> with run_folder(out) as run:  # e.g. save_model(b_prime, run.staging / "bprime_X2.keras")
    ...     size = (run.staging / "report.json").write_text("{}")
    ...     verified = run.commit()
    Committed run ... to .../saved_models/: 1 entries, 1 files, listed in manifest.json
    >>> sorted(os.listdir(out))
    ['manifest.json', 'report.json']
    """
    out = _check_path(Path(os.fspath(out_dir)), argument)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(f"{argument} {out}: cannot create it ({err.strerror}); "
                                "expected a folder you can write to.") from err
    fd = _lock(out, argument, log)
    run = None
    try:
        check_manifest_paths(out)
        _finish_commit(out, log)
        for leftover in clean_stale(out):
            log(f"Removed {leftover}, left by an interrupted run")
        run = RunFolder(out, log)
        yield run
    finally:
        if run is not None and run.committed is None:
            shutil.rmtree(run.staging, ignore_errors=True)
        _unlock(fd)
        if created and (run is None or run.committed is None):
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty


def recover(out_dir: str | os.PathLike, *, log: Log = print) -> Verified | None:
    """Finishes a commit a killed run left and removes dead runs' leftovers, then verifies.

    Args:
        out_dir: the output folder.
        log: progress printer. Defaults to `print`.

    Returns:
        The `Verified` folder, or `None` when it has no manifest.

    Raises:
        FolderBusyError: a run holds the folder now.
        ManifestError: the folder does not match its manifest.
        UnsafePathError: its manifest or commit folder names a path outside it.

    Example:

    >>> import os
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with run_folder(out, log=lambda line: None) as run:
    ...     verified = run.commit()
    >>> os.makedirs(f"{out}/.tmp-999999999-goodnet_X4-k2j1x0/payload")  # a dead pid's debris
    >>> recover(out) == verified
    Removed .../.tmp-999999999-goodnet_X4-k2j1x0, left by an interrupted run
    True
    """
    out = Path(os.fspath(out_dir))
    if not out.is_dir():
        raise OutputFolderError(f"out_dir {out}: found {path_problem(out) or 'a file'}; "
                                "expected an output folder.")
    fd = _lock(out, "out_dir", log)
    try:
        check_manifest_paths(out)
        _finish_commit(out, log)
        for leftover in clean_stale(out):
            log(f"Removed {leftover}, left by an interrupted run")
    finally:
        _unlock(fd)
    return verify_folder(out) if (out / MANIFEST).exists() else None


def _finish_commit(out: Path, log: Log) -> None:
    if os.path.lexists(out / COMMIT_DIR):
        pending = _read_json(out / COMMIT_DIR / MANIFEST) or {}
        log(f"{out}/: finishing the commit of run {pending.get('run_id', '?')}, which was "
            "interrupted")
        _apply(out, log)


# --- the manifest -----------------------------------------------------------------------------


def _sha256(path: Path, sync: bool = False) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
        if sync:
            os.fsync(f.fileno())
    return size, digest.hexdigest()


def _manifest_of(root: Path, run_id: str) -> dict:
    """Lists every file (size, sha256; each fsynced) and folder below `root`."""
    files, dirs = {}, []
    for where, subdirs, names in os.walk(root):
        base = Path(where).relative_to(root)
        for name in sorted([*subdirs, *names]):
            path, rel = Path(where) / name, (base / name).as_posix()
            if path.is_symlink():
                raise OutputFolderError(f"{path}: a symlink in the staging folder; expected "
                                        "files and folders only.")
            if base == Path(".") and (name.startswith(".") or name == MANIFEST
                                      or name.startswith(KEPT_PREFIX)):
                raise OutputFolderError(f"{path}: a reserved name in the staging folder; "
                                        f"expected no '.*', '{MANIFEST}' or '{KEPT_PREFIX}*' "
                                        "entries.")
            if path.is_dir():
                dirs.append(rel)
            else:
                size, digest = _sha256(path, sync=True)
                files[rel] = {"size": size, "sha256": digest}
    entries = sorted({rel.split("/", 1)[0] for rel in [*files, *dirs]})
    return {"format": _FORMAT, "version": 1, "run_id": run_id, "pid": os.getpid(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "entries": entries, "files": files, "dirs": sorted(dirs)}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_manifest(path: Path, out: Path) -> dict:
    """The manifest at `path` governing folder `out`, every field and path checked.

    Args:
        path: the manifest file.
        out: the output folder its paths are relative to.

    Returns:
        The manifest.

    Raises:
        ManifestError: no manifest, or a malformed one (named, with the field).
        UnsafePathError: a path in it that is not inside `out` (see `_inside`).
    """
    if not path.is_file():
        raise ManifestError(f"{path.parent}: found no {MANIFEST}; expected an output folder "
                            f"written by `keras-prune-guard repair` (which writes {MANIFEST}).")
    manifest = _read_json(path)
    problem = _malformed(manifest)
    if problem is not None:
        raise ManifestError(f"{path}: found a file that is not a keras-prune-guard manifest "
                            f"({problem}: damaged, or written by another tool); expected the "
                            f"JSON {MANIFEST} that `repair` writes.")
    for name in manifest["entries"]:
        if "/" in name or name.startswith(".") or name == MANIFEST \
                or name.startswith(KEPT_PREFIX):
            raise _unsafe(path, name, out, "is not a top-level name of a run's output "
                          f"(no '/', '.*', '{MANIFEST}' or '{KEPT_PREFIX}*')")
    for rel in [*manifest["entries"], *manifest["files"], *manifest["dirs"]]:
        _inside(path, rel, out)
    return manifest


def _malformed(manifest: dict | None) -> str | None:
    """What is wrong with the fields of a manifest read from JSON, or `None`."""
    if manifest is None:
        return "not a JSON object"
    if manifest.get("format") != _FORMAT:
        return f"`format` is not {_FORMAT!r}"
    for key, kind, text in (("run_id", str, "a string"), ("entries", list, "a list"),
                            ("files", dict, "an object"), ("dirs", list, "a list")):
        if not isinstance(manifest.get(key), kind):
            return f"`{key}` is {type(manifest.get(key)).__name__}, not {text}"
    if not all(isinstance(v, str) and v for v in [*manifest["entries"], *manifest["dirs"]]):
        return "`entries` or `dirs` holds a value that is not a path"
    for rel, meta in manifest["files"].items():
        if not (rel and isinstance(meta, dict) and isinstance(meta.get("size"), int)
                and isinstance(meta.get("sha256"), str)):
            return f"`files` entry {rel!r} is not {{\"size\": int, \"sha256\": str}}"
    return None


def _unsafe(source: Path, rel: str, out: Path, why: str) -> UnsafePathError:
    return UnsafePathError(
        f"{source}: entry {rel!r} {why}; expected paths inside the output folder {out}/. "
        f"Nothing was moved or deleted: if you did not write this entry, remove {source} "
        "(or the folder holding it) and run again.", rel)


def _inside(source: Path, rel: str, out: Path) -> None:
    """Raises `UnsafePathError` unless `out/rel`, resolved, lies inside `out`.

    Refused: an absolute path, an empty, `.` or `..` part, a backslash, and a path
    whose resolved location leaves `out` (a symlink on the way, or at its end).
    """
    parts = rel.split("/")
    if os.path.isabs(rel) or "\\" in rel or "\0" in rel or any(
            part in ("", ".", "..") for part in parts):
        raise _unsafe(source, rel, out, "is absolute or holds '..', '.' or an empty part")
    root = os.path.realpath(out)
    real = os.path.realpath(out / rel)
    if real == root or os.path.commonpath([root, real]) != root:
        raise _unsafe(source, rel, out, f"resolves to {real} (through a symlink), outside "
                      f"{root}")


def check_manifest_paths(out_dir: str | os.PathLike) -> None:
    """Checks that the manifest and commit folder of `out_dir` name only paths inside it.

    Called before a run moves or deletes anything. A malformed manifest is not refused
    here: the commit treats it as foreign (nothing of the folder counts as the package's
    own, so nothing is deleted) and keeps a copy in `kept-<run id>/`.

    Args:
        out_dir: the output folder.

    Raises:
        UnsafePathError: an absolute path, a `..`, a reserved name or a symlink that
            leaves the folder, in `manifest.json` or in `.keras-prune-guard-commit/`.

    Example:

    >>> import json
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp())
    >>> with run_folder(out, log=lambda line: None) as run:
    ...     verified = run.commit()
    >>> manifest = json.loads((out / "manifest.json").read_text())
    >>> size = (out / "manifest.json").write_text(json.dumps({**manifest, "dirs": ["../x"]}))
    >>> check_manifest_paths(out)
    Traceback (most recent call last):
        ...
    keras_prune_guard._fs.outputs.UnsafePathError: .../manifest.json: entry '../x' is absolute
    or holds '..', '.' or an empty part; ...
    """
    out = Path(os.fspath(out_dir))
    _check_commit_dir(out)
    for path in (out / MANIFEST, out / COMMIT_DIR / MANIFEST):
        if path.is_file():
            with contextlib.suppress(ManifestError):
                _read_manifest(path, out)


def _check_commit_dir(out: Path) -> None:
    """Refuses a commit folder that is not a real folder, or holds symlinks where it moves."""
    pending = out / COMMIT_DIR
    if not os.path.lexists(pending):
        return
    for path in (pending, pending / _ASIDE):
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            raise UnsafePathError(
                f"{path}: found {'a symlink' if path.is_symlink() else 'a file'} at a name "
                "keras-prune-guard reserves for its commit folder; expected the folder a "
                f"run made. Nothing was moved or deleted: remove or rename {path} and run "
                "again.", path.name)
    manifest = _read_json(pending / MANIFEST)
    entries = manifest.get("entries") if manifest else None
    for name in entries if isinstance(entries, list) else []:
        if isinstance(name, str) and "/" not in name and (pending / name).is_symlink():
            raise _unsafe(pending / MANIFEST, name, out, "is a symlink in the commit folder "
                          "(a run's commit folder holds none)")


def _write_json(path: Path, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _under(rel: str, name: str) -> bool:
    return rel == name or rel.startswith(name + "/")


def _problems(out: Path, manifest: dict, name: str | None = None) -> list[str]:
    """What differs between `out` and the manifest (only entry `name`, when given)."""
    problems = []
    for rel, meta in manifest["files"].items():
        if name is not None and not _under(rel, name):
            continue
        path = out / rel
        if path.is_symlink() or not path.is_file():
            problems.append(f"missing {rel}" if not os.path.lexists(path)
                            else f"{rel} is not a file")
        elif path.stat().st_size != meta.get("size"):
            problems.append(f"{rel}: {path.stat().st_size} bytes, the manifest says "
                            f"{meta.get('size')}")
        elif _sha256(path)[1] != meta.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest")
    for rel in manifest["dirs"]:
        if (name is None or _under(rel, name)) and not (out / rel).is_dir():
            problems.append(f"missing folder {rel}/")
    return problems


def _pending_text(out: Path, subject: Path | None = None) -> str:
    """Why a folder with a commit folder is refused; `subject` is the model asked for."""
    pending = _read_json(out / COMMIT_DIR / MANIFEST) or {}
    run, pid = pending.get("run_id", "?"), pending.get("pid")
    head = f"{out}: " if subject is None else f"{subject}: in its folder {out}, "
    if isinstance(pid, int) and alive(pid) and pid != os.getpid():
        return (f"{head}run {run} (pid {pid}) is moving its files into place right now; "
                "expected one complete run (try again in a moment).")
    return (f"{head}the commit of run {run} was interrupted, so the folder may mix two runs; "
            f"expected one complete run. The next `keras-prune-guard repair --out {out}` "
            f"finishes it first, as does keras_prune_guard._fs.outputs.recover({str(out)!r}).")


def verify_folder(out_dir: str | os.PathLike) -> Verified:
    """Checks that `out_dir` holds exactly the files its manifest lists (size and sha256).

    Files the manifest does not list (the user's) are ignored.

    Args:
        out_dir: an output folder written by `repair`.

    Returns:
        `Verified`; `str()` of it reads "complete run <id> (<n> files)".

    Raises:
        ManifestError: (a `ValueError`) no or a damaged manifest, a commit in progress
            or interrupted, or files missing or different (listed in `.problems`).
        UnsafePathError: the manifest names a path outside the folder.

    Example:

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with run_folder(out, log=lambda line: None) as run:
    ...     size = (run.staging / "report.json").write_text("{}")
    ...     verified = run.commit()
    >>> str(verify_folder(out))
    'complete run ...-... (1 files)'
    """
    out = Path(os.fspath(out_dir))
    if not out.is_dir():
        raise ManifestError(f"{out}: found {path_problem(out) or 'a file'}; expected an "
                            "output folder written by keras-prune-guard.")
    if os.path.lexists(out / COMMIT_DIR):
        raise ManifestError(_pending_text(out))
    manifest = _read_manifest(out / MANIFEST, out)
    problems = _problems(out, manifest)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more"
                                          if len(problems) > 8 else "")
        raise ManifestError(f"{out}: does not match the {MANIFEST} of run {manifest['run_id']}: "
                            f"{shown}; expected every file that run wrote, unchanged.", problems)
    return Verified(manifest["run_id"], len(manifest["files"]), out)


def check_entry(path: str | os.PathLike) -> Verified | None:
    """Checks a model inside an output folder against the folder's manifest, before reading it.

    Args:
        path: a model file or SavedModel folder.

    Returns:
        `Verified` for that entry; `None` when no manifest beside it lists it.

    Raises:
        ManifestError: a commit of that folder is in progress or was interrupted, or the
            entry's files differ from the manifest.
        UnsafePathError: the folder's manifest names a path outside the folder.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp())
    >>> with run_folder(out, log=lambda line: None) as run:
    ...     (run.staging / "goodnet_X2").mkdir()
    ...     size = (run.staging / "goodnet_X2" / "saved_model.pb").write_bytes(b"graph")
    ...     verified = run.commit()
    >>> check_entry(out / "goodnet_X2").files  # before eval loads it
    1
    """
    p = Path(os.fspath(path))
    folder = p.parent
    if os.path.lexists(folder / COMMIT_DIR):
        raise ManifestError(_pending_text(folder, p))
    if not (folder / MANIFEST).is_file():
        return None
    manifest = _read_manifest(folder / MANIFEST, folder)
    if p.name not in manifest["entries"]:
        return None
    problems = _problems(folder, manifest, p.name)
    if problems:
        raise ManifestError(
            f"{p}: does not match {folder / MANIFEST} (run {manifest['run_id']}): "
            f"{'; '.join(problems[:8])}; expected the files that run wrote (run repair again, "
            "or copy the model out of the folder to use it as it is).", problems)
    count = sum(1 for rel in manifest["files"] if _under(rel, p.name))
    return Verified(manifest["run_id"], count, folder)


# --- the commit ---------------------------------------------------------------------------
# Every change to the folder goes through these five, so each step is one system call
# (the kill tests stop a process before each of them).


def _move(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _swap(a: Path, b: Path) -> bool:
    return exchange(a, b)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _rmdir(path: Path) -> None:
    os.rmdir(path)


class _Commit:
    """Rolls a commit forward; every method may be re-run after a kill (idempotent)."""

    def __init__(self, out: Path, new: dict, old: dict | None, log: Log):
        self.out, self.pending, self.new, self.log = out, out / COMMIT_DIR, new, log
        self.old_files = {rel: [meta] for rel, meta in (old["files"] if old else {}).items()}
        self.old_dirs = set(old["dirs"]) if old else set()
        self.old_entries = list(old["entries"]) if old else []
        self.foreign_manifest = old is None
        self.all_files = {rel: [*self.old_files.get(rel, []), *([new["files"][rel]]
                                                            if rel in new["files"] else [])]
                          for rel in {*self.old_files, *new["files"]}}
        self.all_dirs = self.old_dirs | set(new["dirs"])
        self.kept_dir = out / f"{KEPT_PREFIX}{new['run_id']}"
        self.kept: list[tuple[str, Path]] = []

    def run(self) -> None:
        for name in self.new["entries"]:
            self.place(name)
        aside = self.pending / _ASIDE
        for name in sorted(os.listdir(aside)) if aside.is_dir() else []:
            self.discard(aside / name, name, rescue=self.out / name)
        for name in self.old_entries:
            if name not in self.new["entries"]:
                self.remove_stale(name)
        if self.foreign_manifest and os.path.lexists(self.out / MANIFEST):
            self.keep(self.out / MANIFEST, MANIFEST)  # damaged or another tool's: not ours
        _replace(self.pending / MANIFEST, self.out / MANIFEST)
        _fsync_dir(self.out)
        self.report()

    def place(self, name: str) -> None:
        src, dst = self.pending / name, self.out / name
        if not os.path.lexists(src):
            return  # moved before a kill
        if not _problems(self.out, self.new, name):  # dst already holds this run's entry
            self.discard(src, name, rescue=dst)
            return
        if os.path.lexists(dst):
            if _real_dir(src) and _real_dir(dst):
                self.merge(dst, name)
                if not os.path.lexists(dst):  # nothing of it was ours: all of it was kept
                    _move(src, dst)
                    return
                if _swap(src, dst):
                    self.discard(src, name, rescue=dst)  # src now holds the old folder
                    return
                aside = self.pending / _ASIDE / name
                aside.parent.mkdir(exist_ok=True)
                _move(dst, aside)  # a kill here: dst missing, src ready: moved on recovery
                _move(src, dst)
                self.discard(aside, name, rescue=dst)
                return
            if src.is_file() and dst.is_file() and _ours(dst, name, self.old_files):
                _replace(src, dst)
                return
            self.keep(dst, name)  # not ours (a user's entry, or no manifest): moved, not deleted
        _move(src, dst)

    def unowned(self, path: Path, rel: str, files: dict, dirs: set) -> list[tuple[Path, str]]:
        """The items below `path` (as `rel`) that are not as a manifest (`files`, `dirs`) lists."""
        if _real_dir(path):
            if rel not in dirs:
                return [(path, rel)]
            found = []
            for child in sorted(os.listdir(path)):
                found += self.unowned(path / child, f"{rel}/{child}", files, dirs)
            return found
        return [] if _ours(path, rel, files) else [(path, rel)]

    def merge(self, dst: Path, name: str) -> None:
        """Moves what is not the previous run's out of `dst` into the new folder (or kept)."""
        for path, rel in self.unowned(dst, name, self.old_files, self.old_dirs):
            target = self.pending / rel
            if os.path.lexists(target) or file_above(target) is not None:
                self.keep(path, rel)  # a file of this run takes its place
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _move(path, target)
            self.kept.append((rel, self.out / rel))

    def discard(self, path: Path, name: str, rescue: Path) -> None:
        """Deletes `path` (a replaced entry) after moving anything unlisted to `rescue`."""
        for item, rel in self.unowned(path, name, self.all_files, self.all_dirs):
            target = rescue.parent / rel
            if os.path.lexists(target) or not target.parent.is_dir():
                self.keep(item, rel)
            else:
                _move(item, target)
                self.kept.append((rel, target))
        if os.path.lexists(path):
            _delete(path)

    def remove_stale(self, name: str) -> None:
        """Deletes the previous run's files of an entry this run did not write; keeps the rest."""
        path = self.out / name
        if not os.path.lexists(path):
            return
        theirs = self.unowned(path, name, self.old_files, self.old_dirs)
        if not theirs:
            _delete(path)
            return
        self._remove_listed(path, name)
        self.kept += [(rel, item) for item, rel in theirs]  # left where they are

    def _remove_listed(self, path: Path, rel: str) -> None:
        if _real_dir(path):
            if rel not in self.old_dirs:
                return
            for child in sorted(os.listdir(path)):
                self._remove_listed(path / child, f"{rel}/{child}")
            if not os.listdir(path):
                _rmdir(path)
        elif _ours(path, rel, self.old_files):
            _delete(path)

    def keep(self, path: Path, rel: str) -> None:
        target = self.kept_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _move(path, target)
        self.kept.append((rel, target))

    def report(self) -> None:
        if not self.kept:
            return
        shown = ", ".join(f"{rel} -> {target}" for rel, target in self.kept[:6])
        more = f", and {len(self.kept) - 6} more" if len(self.kept) > 6 else ""
        self.log(f"Kept {len(self.kept)} item(s) in {self.out}/ that are not as a manifest of "
                 "keras-prune-guard lists them (yours, changed since, or from a run without a "
                 f"manifest); nothing was deleted: {shown}{more}")


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _ours(path: Path, rel: str, files: dict[str, list[dict]]) -> bool:
    """True when `path` is a file with the bytes a manifest lists for `rel` (size, sha256).

    A listed file someone changed since is not ours any more: it is kept, not deleted.
    """
    metas = files.get(rel)
    if not metas or path.is_symlink() or not path.is_file():
        return False
    size = path.stat().st_size
    if all(meta.get("size") != size for meta in metas):
        return False
    digest = _sha256(path)[1]
    return any(meta.get("size") == size and meta.get("sha256") == digest for meta in metas)


def _apply(out: Path, log: Log) -> None:
    """Rolls the pending commit of `out` forward, then removes the commit folder."""
    pending = out / COMMIT_DIR
    _check_commit_dir(out)
    new_path = pending / MANIFEST
    try:
        new = _read_manifest(new_path, out) if new_path.is_file() else None
    except ManifestError as err:  # damaged: the whole commit folder is kept, below
        log(f"Warning: {err}")
        new = None
    if new is not None:
        try:
            old = _read_manifest(out / MANIFEST, out)
        except ManifestError:
            old = None  # no (or a damaged) manifest: nothing in the folder counts as ours
        _Commit(out, new, old, log).run()
    leftovers = [p for p in pending.rglob("*") if not _real_dir(p)] if pending.is_dir() else []
    if leftovers:  # never expected: every entry was placed or discarded above
        kept = out / f"{KEPT_PREFIX}interrupted-{time.strftime('%Y%m%dT%H%M%SZ')}"
        _move(pending, kept)
        log(f"Kept {len(leftovers)} file(s) of an interrupted commit in {kept}/")
    elif os.path.lexists(pending):
        with contextlib.suppress(FileNotFoundError):
            _delete(pending)
    _fsync_dir(out)


__all__ = [
    "COMMIT_DIR",
    "KEPT_PREFIX",
    "MANIFEST",
    "FolderBusyError",
    "ManifestError",
    "OutputFolderError",
    "RunFolder",
    "UnsafePathError",
    "Verified",
    "check_entry",
    "check_manifest_paths",
    "check_out_dir",
    "recover",
    "run_folder",
    "verify_folder",
]
