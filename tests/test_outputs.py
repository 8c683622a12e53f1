"""One run owns an output folder (keras_prune_guard._fs.outputs), and file inputs checked early.

Real files throughout: real `repair` runs on a generated DeepID BadNet, real SIGKILLs, a real
10,000 x 10,000 PNG. Processes that only commit files (or only read an image) load the
plain modules `outputs` and `data` without the package's `__init__` (which imports Keras),
so each of the many kill processes starts in a tenth of a second (`data.files` imports
TensorFlow itself, so the one process reading the PNG takes seconds).

The fast tier kills a commit before each of its steps; CI's slow tier also kills the commit's
two-rename fallback and real `repair` runs at five points.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_prune_guard  # noqa: F401  (registers ChannelMask and GoodNetModel)
from keras_prune_guard._fs.outputs import (
    COMMIT_DIR,
    MANIFEST,
    FolderBusyError,
    ManifestError,
    OutputFolderError,
    check_entry,
    check_out_dir,
    recover,
    run_folder,
    verify_folder,
)
from keras_prune_guard.cli import main as cli_main
from keras_prune_guard.data.files import DataError, load_images
from keras_prune_guard.deploy.evaluate import ServedModel, load_model_for_eval
from keras_prune_guard.model.loading import load_network, unknown_classes
from keras_prune_guard.repair import repair

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "keras_prune_guard"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
PREFIX = "keras-prune-guard repair: error: "
# (relative path, text) of the user's files put into the output folder before a run.
USER_FILES = [("notes.txt", "top-level notes"), ("goodnet_X4/notes.txt", "inside X4"),
              ("goodnet_X2/mine.txt", "a folder of mine"), ("goodnet_X10/keep.txt", "X10")]


def repair_argv(gen_dir: Path, out: Path, *thresholds: str) -> list[str]:
    return [sys.executable, "-m", "keras_prune_guard.cli", "repair",
            "--weights", str(gen_dir / "bd_weights.weights.h5"),
            "--valid", str(gen_dir / "clean_faces.h5"), "--fine-tune-epochs", "0",
            "--thresholds", *thresholds, "--out", str(out)]


def run_cli(argv: list[str], timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=ENV)


def light_python(code: str, *args: str, timeout=120) -> subprocess.CompletedProcess:
    """Runs `code` with `keras_prune_guard._fs.outputs`/`.data` importable without Keras."""
    prelude = ("import sys, types\n"
               "pkg = types.ModuleType('keras_prune_guard')\n"
               f"pkg.__path__ = [{str(PKG)!r}]\n"
               "sys.modules['keras_prune_guard'] = pkg\n")
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=ENV)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def link_tree(source: Path, target: Path) -> Path:
    """A copy of `source` made of hard links (the commit renames and unlinks, never edits)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def add_user_files(out: Path) -> None:
    for rel, text in USER_FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)


def manifest_of(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


@pytest.fixture(scope="module")
def runs(gen_dir, tmp_path_factory) -> dict[str, Path]:
    """Two complete real outputs: "old" (X = 4, 10) and "new" (X = 2, 4), run at once."""
    found, started = {}, []
    for name, thresholds in (("old", ("4", "10")), ("new", ("2", "4"))):
        found[name] = tmp_path_factory.mktemp("runs") / name
        log = found[name].with_name(f"{name}.stderr")
        with open(log, "w") as err:
            started.append((subprocess.Popen(
                repair_argv(gen_dir, found[name], *thresholds), cwd=ROOT, env=ENV,
                stdout=subprocess.DEVNULL, stderr=err), log))
    for proc, log in started:
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return found


def assert_user_files_kept(out: Path, new_run: str | None) -> None:
    """Each user file is where it was, or (only where a new folder took its place) kept."""
    for rel, text in USER_FILES:
        if new_run is not None and rel.startswith("goodnet_X2/"):  # a folder of the user's
            rel = f"kept-{new_run}/{rel}"  # that the new run's goodnet_X2/ replaced
        assert (out / rel).read_text() == text, rel


# --- the manifest and the commit ---------------------------------------------------------------


def test_a_run_writes_a_manifest_that_verifies(runs):
    out = runs["old"]
    manifest = manifest_of(out)
    assert manifest["entries"] == ["bprime_X10.h5", "bprime_X10.keras", "bprime_X4.h5",
                                   "bprime_X4.keras", "goodnet_X10", "goodnet_X10.keras",
                                   "goodnet_X4", "goodnet_X4.keras", "report"]
    listed = {rel: meta["sha256"] for rel, meta in manifest["files"].items()}
    assert listed == {rel: d for rel, d in snapshot(out).items() if rel != MANIFEST}
    assert "goodnet_X4/saved_model.pb" in listed and "report/report.json" in listed
    assert "goodnet_X4/variables" in manifest["dirs"]
    assert str(manifest["pid"]) in manifest["run_id"]
    result = verify_folder(out)
    assert str(result) == f"complete run {manifest['run_id']} ({len(listed)} files)"
    summary = json.loads((out / "report" / "report.json").read_text())
    assert summary["rows"][0]["files"]["repaired_keras"] == str(out / "bprime_X4.keras")
    assert not list(out.rglob(".tmp-*")) and not (out / COMMIT_DIR).exists()


def test_verify_folder_lists_what_is_missing_or_changed(runs, tmp_path):
    out = link_tree(runs["old"], tmp_path / "out")
    (out / "goodnet_X4" / "fingerprint.pb").unlink()
    changed = out / "bprime_X4.h5"
    data = changed.read_bytes()
    changed.unlink()  # a new file, not the hard link's shared bytes
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    shutil.rmtree(out / "report")
    with pytest.raises(ManifestError) as err:
        verify_folder(out)
    text = str(err.value)
    run = manifest_of(out)["run_id"]
    assert text.startswith(f"{out}: does not match the manifest.json of run {run}: ")
    assert "missing goodnet_X4/fingerprint.pb" in text
    assert "bprime_X4.h5: sha256 differs from the manifest" in text
    assert "missing folder report/" in text and "expected every file that run wrote" in text
    assert len(err.value.problems) == 8  # 1 + 1 + the 5 report files + report/
    with pytest.raises(ManifestError, match="found no manifest.json; expected an output folder"):
        verify_folder(tmp_path)


def test_run_in_a_folder_with_user_files_keeps_every_one(runs, tmp_path):
    """Replacing goodnet_X4/ keeps the user's file in it; a user's goodnet_X2/ is kept aside."""
    out = link_tree(runs["old"], tmp_path / "out")
    add_user_files(out)
    (out / "report" / "report.md").unlink()  # the previous run's report, edited by the user
    (out / "report" / "report.md").write_text("my edits")
    old = manifest_of(out)
    lines = []
    with run_folder(out, log=lines.append) as run:
        for entry in runs["new"].iterdir():
            if entry.name != MANIFEST:
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, run.staging /
                                                                     entry.name)
        result = run.commit()
    new = manifest_of(out)
    assert result.run_id == new["run_id"] != old["run_id"]
    assert_user_files_kept(out, new["run_id"])
    # The new run's files, byte for byte; the old run's X10 files gone, but the user's file
    # in goodnet_X10/ left where it was (with only it in the folder).
    source = snapshot(runs["new"])
    assert {rel: snapshot(out)[rel] for rel in new["files"]} == {
        rel: source[rel] for rel in new["files"]}
    assert not (out / "bprime_X10.keras").exists()
    assert sorted(os.listdir(out / "goodnet_X10")) == ["keep.txt"]
    kept = out / f"kept-{new['run_id']}"
    assert sorted(os.listdir(kept)) == ["goodnet_X2", "report"]
    assert sorted(os.listdir(kept / "report")) == ["report.md"]  # only the changed file
    assert (kept / "report" / "report.md").read_text() == "my edits"
    said = "\n".join(lines)
    assert "nothing was deleted" in said and "goodnet_X2 -> " in said
    assert "goodnet_X4/notes.txt" in said and "goodnet_X10/keep.txt" in said
    assert str(verify_folder(out)).startswith(f"complete run {new['run_id']}")


def test_a_folder_without_a_manifest_is_kept_not_deleted(runs, tmp_path):
    """The output of a version without manifests: nothing in it counts as ours."""
    out = link_tree(runs["old"], tmp_path / "out")
    (out / MANIFEST).unlink()
    before = snapshot(out)
    with run_folder(out, log=lambda text: None) as run:
        (run.staging / "bprime_X4.keras").write_bytes(b"new bytes")
        result = run.commit()
    kept = out / f"kept-{result.run_id}"
    assert (out / "bprime_X4.keras").read_bytes() == b"new bytes"
    assert snapshot(kept) == {"bprime_X4.keras": before["bprime_X4.keras"]}
    assert {rel: d for rel, d in snapshot(out).items() if not rel.startswith(("kept-",
            "bprime_X4.keras", MANIFEST))} == {
        rel: d for rel, d in before.items() if rel != "bprime_X4.keras"}  # all else untouched


def test_a_failed_run_leaves_the_previous_output_and_no_folder_it_made(runs, tmp_path):
    out = link_tree(runs["old"], tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="sweep failed"):
        with run_folder(out, log=lambda text: None) as run:
            (run.staging / "bprime_X4.keras").write_bytes(b"half")
            raise RuntimeError("sweep failed")
    assert snapshot(out) == before and not list(out.glob(".tmp-*"))
    fresh = tmp_path / "fresh" / "out"
    with pytest.raises(RuntimeError):
        with run_folder(fresh, log=lambda text: None):
            raise RuntimeError("stop")
    assert not fresh.exists() and (tmp_path / "fresh").is_dir()


# --- a kill at every step of the commit ---------------------------------------------------------

COMMIT_CHILD = """
import os, shutil, signal, sys
from pathlib import Path
from keras_prune_guard._fs import outputs
out, source, kill_at, exchange = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
steps = [0]

def killing(step):
    def run(*args):
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(*args)
    return run

with outputs.run_folder(out, log=lambda text: None) as run:
    for entry in sorted(source.iterdir()):
        if entry.name != "manifest.json":
            if entry.is_dir():
                shutil.copytree(entry, run.staging / entry.name, copy_function=os.link)
            else:
                os.link(entry, run.staging / entry.name)
    if exchange == "fallback":  # as on macOS, Windows or a file system without renameat2
        outputs._swap = lambda a, b: False
    for name in ("_move", "_replace", "_swap", "_delete", "_rmdir"):
        setattr(outputs, name, killing(getattr(outputs, name)))
    run.commit()
print("steps", steps[0])
"""


#: The fast tier's one kill test: every step of the commit, with renameat2 as on Linux; the
#: two-rename fallback (macOS, Windows) and the kills of real runs are CI's slow tier.
@pytest.mark.parametrize("exchange", ["renameat2", pytest.param("fallback",
                                                                marks=pytest.mark.slow)])
@pytest.mark.slow
def test_sigkill_before_each_step_of_the_commit_leaves_old_or_new(runs, tmp_path, exchange):
    """Killed before each of its renames and deletions, a commit leaves the old output or,
    once past its commit point, one that `recover` (or the next run) completes into the new
    output; the user's files survive every time."""
    old_run = manifest_of(runs["old"])["run_id"]
    source = snapshot(runs["new"])
    outcomes = []
    for kill_at in range(1, 200):
        out = link_tree(runs["old"], tmp_path / f"out{kill_at}")
        add_user_files(out)
        before = snapshot(out)
        done = light_python(COMMIT_CHILD, str(out), str(runs["new"]), str(kill_at), exchange)
        finished = done.returncode == 0
        assert finished or done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        pending = (out / COMMIT_DIR).exists()
        if pending:  # past the commit point: detectable, and refused by readers
            with pytest.raises(ManifestError, match="the commit of run .* was interrupted"):
                verify_folder(out)
            with pytest.raises(ValueError, match="interrupted, so the folder may mix two runs"):
                load_model_for_eval(out / "goodnet_X4")
        recover(out, log=lambda text: None)
        result = verify_folder(out)
        assert not (out / COMMIT_DIR).exists() and not list(out.rglob(".tmp-*"))
        if result.run_id == old_run:
            assert not pending and snapshot(out) == before
            assert_user_files_kept(out, None)
            outcomes.append("old")
        else:
            new = manifest_of(out)
            assert {rel: snapshot(out)[rel] for rel in new["files"]} == {
                rel: source[rel] for rel in new["files"]}
            assert_user_files_kept(out, new["run_id"])
            assert not (out / "goodnet_X10.keras").exists()
            outcomes.append("new, recovered" if pending else "new")
        shutil.rmtree(out)
        if finished:
            break
    assert finished, "the commit never finished"
    steps = int(done.stdout.split()[-1])
    assert len(outcomes) == steps + 1 and steps >= 15
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes[1:-1] == ["new, recovered"] * (steps - 1)  # every kill past the commit point


# --- real runs: concurrency, kills, user files, bad --out ---------------------------------------


def _staging(pid: int):
    def ready(out: Path):
        return next((n for n in os.listdir(out) if n.startswith(f".tmp-{pid}-run-")), None)
    return ready


def _in_staging(pid: int, prefix: str, inside: str):
    """Kill point: an atomic write `.tmp-<pid>-<prefix>*` in the staging folder has begun."""
    def ready(out: Path):
        staging = _staging(pid)(out)
        if staging is None:
            return None
        try:
            names = os.listdir(out / staging)
        except OSError:
            return None
        if any(n.startswith(prefix.format(pid=pid)) and (out / staging / n / inside).exists()
               for n in names):
            return staging
        return None
    return ready


def _report(pid: int):
    """Kill point: the report's folder exists in the staging folder (the report is written)."""
    def ready(out: Path):
        staging = _staging(pid)(out)
        return staging if staging and (out / staging / "report").is_dir() else None
    return ready


def _commit_started(pid: int):
    return lambda out: COMMIT_DIR if (out / COMMIT_DIR).exists() else None


KILL_POINTS = {
    "sweep": _staging,  # the folder locked and staged, the sweep under way
    "first_model": lambda pid: _in_staging(pid, ".tmp-{pid}-bprime_X2.keras", "payload.keras"),
    "savedmodel": lambda pid: _in_staging(pid, ".tmp-{pid}-goodnet_X4-", "payload/variables"),
    "report": _report,
    "commit": _commit_started,
}


def _wait_for(proc: subprocess.Popen, out: Path, ready, timeout=300.0):
    """Polls every millisecond until `ready(out)`; `None` when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        with_entry = ready(out) if out.is_dir() else None
        if with_entry:
            return with_entry
        time.sleep(0.001)
    proc.kill()
    pytest.fail("point not reached in time")


def _start(gen_dir: Path, out: Path, *thresholds: str) -> subprocess.Popen:
    return subprocess.Popen(repair_argv(gen_dir, out, *thresholds), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_second_repair_on_the_same_out_exits_2_naming_the_first(runs, gen_dir, tmp_path,
                                                               capsys):
    """The second run is the CLI in this process (one process start fewer than two)."""
    out = link_tree(runs["old"], tmp_path / "out")
    first = _start(gen_dir, out, "2")
    try:
        assert _wait_for(first, out, _staging(first.pid)), first.communicate()[1][-2000:]
        os.kill(first.pid, signal.SIGSTOP)  # hold it inside its run: the overlap is certain
        code = cli_main(repair_argv(gen_dir, out, "4")[3:])
        second = capsys.readouterr()
        os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert code == 2, second.err[-2000:]
    line = second.err.strip().splitlines()[-1]
    assert line == (f"{PREFIX}--out {out}: another keras-prune-guard run (pid {first.pid}) is "
                    "writing to this folder; expected a folder no other run is using (wait for "
                    "it to end, or choose another --out).")
    assert "Ranking" not in second.out and "Traceback" not in second.err
    assert first.returncode == 0, stderr[-3000:]
    manifest = manifest_of(out)
    assert manifest["pid"] == first.pid and "bprime_X2.keras" in manifest["entries"]
    assert str(verify_folder(out)).startswith(f"complete run {manifest['run_id']}")
    assert "bprime_X10.keras" not in os.listdir(out)  # the old run's X10 went with its run


#: Kill points after which the next `repair` runs on the folder: one before the commit point
#: (the old run kept) and the commit (the new run, or its commit finished). The others are
#: before the commit point too, and leave what "sweep" leaves (a dead run's staging folder):
#: after them `recover`, the clean-up each run starts with (`run_folder`), removes it.
NEXT_RUN_POINTS = {"sweep", "commit"}


@pytest.mark.slow  # the fast tier kills the commit at every step (above), without a real run
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_during_a_real_repair_leaves_old_or_new_complete(runs, gen_dir, tmp_path,
                                                                point):
    out = link_tree(runs["old"], tmp_path / "out")
    add_user_files(out)
    before = snapshot(out)
    old_run = manifest_of(out)["run_id"]
    proc = _start(gen_dir, out, "2", "4")
    try:
        hit = _wait_for(proc, out, KILL_POINTS[point](proc.pid))
        if hit is not None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if point != "commit":  # the commit lasts milliseconds: the run may finish first
        assert hit is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    pending = (out / COMMIT_DIR).exists()
    if pending:
        with pytest.raises(ManifestError, match="interrupted"):
            verify_folder(out)
    elif point == "commit":  # past its commit point: the new run, complete
        assert manifest_of(out)["pid"] == proc.pid and verify_folder(out)
    else:  # killed before its commit point: the old run, byte for byte
        assert verify_folder(out).run_id == old_run
        assert {r: d for r, d in snapshot(out).items() if not r.startswith(".tmp-")} == before
    if point not in NEXT_RUN_POINTS:
        assert recover(out, log=lambda text: None).run_id == old_run
        assert snapshot(out) == before and not list(out.rglob(".tmp-*"))
        return
    # The next run on the folder finishes (or discards) what the killed one left.
    done = run_cli(repair_argv(gen_dir, out, "2", "4"))
    assert done.returncode == 0, done.stderr[-3000:]
    if pending:
        assert "finishing the commit of run" in done.stdout
    new = manifest_of(out)
    assert new["pid"] != proc.pid and str(verify_folder(out)).startswith(
        f"complete run {new['run_id']}")
    assert not (out / COMMIT_DIR).exists() and not list(out.rglob(".tmp-*"))
    kept = sorted(p.name for p in out.glob("kept-*"))
    assert len(kept) == 1  # the user's goodnet_X2/ was moved aside once, by the first commit
    for rel, text in USER_FILES:
        where = f"{kept[0]}/{rel}" if rel.startswith("goodnet_X2/") else rel
        assert (out / where).read_text() == text
    ServedModel(out / "goodnet_X4")  # the user's notes.txt inside does not disturb it


def test_out_naming_a_file_or_a_path_below_one_fails_before_any_work(gen_dir, tmp_path, capsys):
    report = tmp_path / "report.md"
    report.write_text("mine")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = [
        (report, f"--out {report}: found an existing file (4 bytes); expected a folder (an "
                 "existing one, or a path where one can be created)."),
        (report / "sub", f"--out {report / 'sub'}: found that {report} is a file, so no folder "
                         "can be created below it; expected a folder"),
        (loop, f"--out {loop}: found a symlink loop ({loop} -> {str(loop)!r}); expected a folder"),
    ]
    for out, message in cases:
        code = cli_main(["repair", "--weights", str(gen_dir / "bd_weights.weights.h5"),
                         "--valid", str(gen_dir / "clean_faces.h5"), "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 2, captured.err
        assert captured.err.strip().splitlines() == [captured.err.strip()]  # one line
        assert captured.err.startswith(PREFIX + message), captured.err
        assert "Ranking" not in captured.out and captured.out == ""  # no data read, no sweep
    assert report.read_text() == "mine"
    code = cli_main(["demo", "--out", str(report), "--cache-dir", str(tmp_path / "cache")])
    assert code == 2 and "demo: error: --out" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before the benchmark was built


def test_repair_api_checks_out_dir_before_the_sweep(gen_model, gen_clean, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    logged = []
    with pytest.raises(OutputFolderError, match=r"out_dir .*a_file/out: found that .*a_file is "
                                               r"a file, so no folder can be created below it"):
        repair(gen_model, gen_clean, target / "out", log=logged.append)
    assert logged == []
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputFolderError, match="is not writable"):
            check_out_dir(locked / "out", argument="--out")


HOLDER = """
import sys, time
from keras_prune_guard._fs import outputs
with outputs.run_folder(sys.argv[1], log=lambda text: None):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_held_folder_is_busy_for_the_api_too(gen_model, gen_clean, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, types\n"
                               "pkg = types.ModuleType('keras_prune_guard')\n"
                               f"pkg.__path__ = [{str(PKG)!r}]\n"
                               "sys.modules['keras_prune_guard'] = pkg\n" + HOLDER, str(out)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(FolderBusyError) as err:
            check_out_dir(out)
        assert err.value.pid == holder.pid and f"(pid {holder.pid})" in str(err.value)
        logged = []
        with pytest.raises(FolderBusyError):
            repair(gen_model, gen_clean, out, log=logged.append)
        assert not any("Ranking" in line for line in logged)
        with pytest.raises(FolderBusyError):
            recover(out)
    finally:
        holder.kill()
        holder.wait()
    check_out_dir(out)  # the kernel dropped the lock with the process
    assert sorted(p.name for p in out.iterdir())[0].startswith(f".tmp-{holder.pid}-run-")
    assert recover(out, log=lambda text: None) is None and list(out.iterdir()) == []


def test_eval_checks_a_model_against_its_folders_manifest(runs, tmp_path):
    out = link_tree(runs["old"], tmp_path / "out")
    run = manifest_of(out)["run_id"]
    assert str(check_entry(out / "goodnet_X4")).startswith(f"complete run {run} (")
    assert isinstance(load_model_for_eval(out / "bprime_X4.keras"), keras.Model)
    changed = out / "bprime_X4.keras"
    data = changed.read_bytes()
    changed.unlink()
    changed.write_bytes(data + b"extra")
    with pytest.raises(ManifestError) as err:
        load_model_for_eval(changed)
    assert str(err.value).startswith(f"{changed}: does not match {out / MANIFEST} (run ")
    assert f"bprime_X4.keras: {len(data) + 5} bytes, the manifest says {len(data)}" in str(
        err.value)
    assert check_entry(tmp_path / "elsewhere.keras") is None  # no manifest beside it


# --- model files: one line in the CLI's words ------------------------------------------------


def _small_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3), name="x")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(x), name="small")


def _rename_class(config, layer: str):
    """The config with layer `layer` made an instance of an unregistered class 'Foo'."""
    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Dense" and isinstance(node.get("config"), dict) \
                    and node["config"].get("name") == layer:
                node.update(class_name="Foo", registered_name="mylib>Foo")
                if "module" in node:
                    node["module"] = "mylib.layers"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(config)
    return config


def unknown_class_keras(path: Path) -> Path:
    import zipfile

    source = path.with_suffix(".ok.keras")
    _small_model().save(source)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json":
                data = json.dumps(_rename_class(json.loads(data), "dense")).encode()
            zout.writestr(item, data)
    return path


def unknown_class_h5(path: Path) -> Path:
    import warnings

    import h5py

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _small_model().save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(_rename_class(config, "dense"))
    return path


def savedmodel(path: Path) -> Path:
    _small_model().export(str(path), verbose=False)
    return path


def loop(path: Path) -> Path:
    path.symlink_to(path.name)
    return path


MODEL_CASES = [
    ("unknown_class_keras", lambda t: unknown_class_keras(t / "model.keras"),
     "model_path {p}: names a class Keras does not know: 'Foo' (module 'mylib.layers', "
     "registered as 'mylib>Foo'); expected built-in Keras layers or keras_prune_guard's"),
    ("unknown_class_h5", lambda t: unknown_class_h5(t / "model.h5"),
     "model_path {p}: names a class Keras does not know: 'Foo' (no module, registered as "
     "'mylib>Foo'); expected built-in Keras layers or keras_prune_guard's"),
    ("savedmodel_folder", lambda t: savedmodel(t / "goodnet_X2"),
     "model_path {p}: a SavedModel folder; repair (and load_network) needs the network as a "
     ".keras or .h5 model file"),
    ("plain_folder", lambda t: (t / "models").mkdir() or t / "models",
     "model_path {p}: a folder, not a model file; expected a .keras or .h5 model file."),
    ("symlink_loop", lambda t: loop(t / "loop.keras"),
     "model_path {p}: a symlink loop ({p} -> 'loop.keras'); expected a .keras or .h5 model"),
    ("broken_symlink", lambda t: (t / "gone.keras").symlink_to("nowhere.keras") or t /
     "gone.keras", "model_path {p}: a broken symlink (to 'nowhere.keras', which does not "
     "exist); expected a .keras or .h5 model file."),
]


@pytest.mark.parametrize("build, message", [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])
def test_bad_model_files_get_one_line_in_the_cli_words(gen_dir, tmp_path, capsys, build,
                                                       message):
    path = build(tmp_path)
    expected = message.format(p=path)
    with pytest.raises(ValueError) as err:
        load_network(path)
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    code = cli_main(["repair", "--model", str(path), "--valid",
                     str(gen_dir / "clean_faces.h5"), "--out", str(tmp_path / "out")])
    err_text = capsys.readouterr().err
    assert code == 2 and err_text.startswith(PREFIX + expected), err_text
    assert len(err_text.strip().splitlines()) == 1 and "Traceback" not in err_text
    assert "could not be deserialized" not in err_text


def test_unknown_classes_reads_them_from_the_config(tmp_path):
    import zipfile

    path = unknown_class_keras(tmp_path / "model.keras")
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert unknown_classes(config) == [("Foo", "mylib.layers", "mylib>Foo")]
    ok = json.loads(zipfile.ZipFile(tmp_path / "model.ok.keras").read("config.json"))
    assert unknown_classes(ok) == []


@pytest.mark.parametrize("case", ["symlink_loop", "folder_not_savedmodel", "repair_output"])
def test_eval_names_bad_model_paths(gen_dir, runs, tmp_path, capsys, case):
    clean = str(gen_dir / "clean_faces.h5")
    if case == "symlink_loop":
        path, piece = loop(tmp_path / "m.keras"), "found a symlink loop"
    elif case == "folder_not_savedmodel":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "notes.txt").write_text("x")
        piece = "found a folder without saved_model.pb (it holds notes.txt)"
    else:
        path, piece = runs["old"], "This is an output folder of `repair`: pass one of its"
    expected = "expected a SavedModel folder, a .keras, an .h5, an .onnx or a .tflite file"
    with pytest.raises(ValueError, match=expected):
        load_model_for_eval(path)
    code = cli_main(["eval", clean, clean, str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"keras-prune-guard eval: error: model {path}: ")
    assert piece in err and len(err.strip().splitlines()) == 1


# --- images: the size is read from the header, before decoding --------------------------------


def write_big_png(path: Path, width=10_000, height=10_000) -> Path:
    """A real single-colour RGB PNG, compressed row by row (never whole in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    squeeze, row, parts = zlib.compressobj(9), b"\x00" + b"\x80" * (3 * width), []
    for _ in range(height):
        parts.append(squeeze.compress(row))
    parts.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                     chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def big_png(tmp_path_factory) -> Path:
    return write_big_png(tmp_path_factory.mktemp("png") / "huge.png")


RSS_CHILD = """
import resource, sys
from keras_prune_guard.data.files import DataError, load_images
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in sys.argv[2:]:
    shape = None if name == "none" else (55, 47, 3)
    try:
        load_images(sys.argv[1], image_shape=shape)
        print("loaded")
    except DataError as err:
        print(err)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
#: How the tests below load the huge PNG: with the model's image shape, or with none.
PNG_SHAPES = ("model", "none")


@pytest.fixture(scope="module")
def huge_png_loads(big_png) -> dict[str, tuple[str, int]]:
    """Per shape, what one child process said loading `big_png`, and how far its peak RSS
    had grown (kB) since before the first load: one process (its imports take seconds)
    for both, and a peak, so a decode in either would show in both figures after it."""
    done = light_python(RSS_CHILD, str(big_png), *PNG_SHAPES)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()[-2 * len(PNG_SHAPES):]
    return {shape: (lines[2 * i], int(lines[2 * i + 1])) for i, shape in enumerate(PNG_SHAPES)}


@pytest.mark.parametrize("shape", PNG_SHAPES)
def test_huge_png_is_refused_from_its_header_without_decoding(big_png, huge_png_loads, shape):
    from PIL import Image

    assert big_png.stat().st_size < 400_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(big_png) as im:
        assert im.size == (10_000, 10_000)  # a real PNG Pillow reads (and warns about)
    message, grown_kb = huge_png_loads[shape]
    assert message.startswith(f"{big_png}: found an image of ")
    if shape == "model":
        assert message == (f"{big_png}: found an image of (H, W, C) (10000, 10000, 3) in its "
                           "header (not decoded); expected (55, 47, 3), as the model's input "
                           "(images are not resized).")
    else:
        assert "10000 x 10000 pixels" in message
        assert f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}" in message
    assert int(grown_kb) < 50_000  # decoding it would take 300 MB (RGB), 1.2 GB as float32


def test_images_of_the_right_size_still_load(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (55, 47, 3)).astype("uint8")
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:50]).save(tmp_path / "b.png")
    x, names = load_images(tmp_path / "a.png", image_shape=(55, 47, 3))
    np.testing.assert_array_equal(x[0], pixels)
    with pytest.raises(DataError, match=r"b.png: found an image of \(H, W, C\) \(50, 47, 3\) in "
                                        r"its header \(not decoded\); expected \(55, 47, 3\), as "
                                        r"the first image a.png"):
        load_images(tmp_path)


def test_image_above_twice_pillows_limit_is_refused_unopened(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (100, 100), (9, 9, 9)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow's documented setting
    with pytest.raises(DataError, match=r"big.png: found an image too large to decode \(.*"
                                        r"10000 pixels.*\); expected an image of the model's "
                                        r"size \(the image was not decoded\)"):
        load_images(tmp_path / "big.png", image_shape=(100, 100, 3))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # above the limit, below twice it
    with pytest.raises(DataError, match=r"100 x 100 pixels .*MAX_IMAGE_PIXELS = 5,000 pixels"):
        load_images(tmp_path / "big.png")


def test_eval_names_a_savedmodel_tensorflow_cannot_read(tmp_path, capsys):
    (tmp_path / "goodnet_X2").mkdir()
    (tmp_path / "goodnet_X2" / "saved_model.pb").write_bytes(b"not a protocol buffer")
    with pytest.raises(ValueError, match=r"SavedModel .*goodnet_X2: TensorFlow could not load it "
                                         r"\(.*\); expected a SavedModel folder written by"):
        load_model_for_eval(tmp_path / "goodnet_X2")
    h5 = str(tmp_path / "missing.h5")
    assert cli_main(["eval", h5, h5, str(tmp_path / "goodnet_X2")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "TensorFlow could not load it" in err
