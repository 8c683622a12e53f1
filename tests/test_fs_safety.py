"""Issue 23, the BAD cases: each reproduced with small real files, then refused.

The output folder never reaches outside itself (manifest and commit-folder paths),
stale-temporary cleanup touches only the package's own names, a file declaring more
images than memory (or its own bytes) can hold is refused before it is read, and
`eval --images` checks the pixel range.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from keras_prune_guard._fs.atomic import clean_stale
from keras_prune_guard._fs.outputs import (
    COMMIT_DIR,
    MANIFEST,
    UnsafePathError,
    check_entry,
    check_out_dir,
    recover,
    run_folder,
    verify_folder,
)
from keras_prune_guard.data.files import MEMORY_FRACTION, DataError, available_memory, load_lab_h5

SHAPE = (55, 47, 3)  # DeepID's input, (H, W, C)


def commit(out: Path, files: dict[str, str]) -> str:
    """Commits one run writing `files` (relative path -> text) into `out`; its run id."""
    with run_folder(out, log=lambda text: None) as run:
        for rel, text in files.items():
            path = run.staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        run.commit()
    return run.run_id


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` (symlinks not followed) and its bytes."""
    found = {}
    for where, _, names in os.walk(root):
        for name in names:
            path = Path(where) / name
            if not path.is_symlink():
                found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def meta(path: Path) -> dict:
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def forge(manifest_path: Path, entry: str, files: dict[str, Path], dirs=()) -> None:
    """Adds `entry` to a manifest, listing `files` (manifest path -> real file) rightly."""
    manifest = json.loads(manifest_path.read_text())
    manifest["entries"].append(entry)
    manifest["files"].update({rel: meta(path) for rel, path in files.items()})
    manifest["dirs"] += list(dirs)
    manifest_path.write_text(json.dumps(manifest))


@pytest.fixture
def folder(tmp_path) -> tuple[Path, Path]:
    """`(out, victim)`: an output folder with one complete run, and a file beside it."""
    out = tmp_path / "out"
    commit(out, {"bprime_X2.keras": "model", "report/report.md": "report"})
    victim = tmp_path / "x"
    victim.write_text("the user's file, outside --out")
    return out, victim


def assert_refused_and_untouched(out: Path, tmp_path: Path, entry: str) -> None:
    """Every way into the folder refuses naming `entry`; no file anywhere changed."""
    before = tree(tmp_path)
    for call in (lambda: commit(out, {"bprime_X4.keras": "new"}), lambda: check_out_dir(out),
                 lambda: recover(out), lambda: verify_folder(out)):
        with pytest.raises(UnsafePathError) as caught:
            call()
        assert caught.value.entry == entry and repr(entry) in str(caught.value)
        assert "\n" not in str(caught.value) and "Nothing was moved or deleted" in str(
            caught.value)
    assert tree(tmp_path) == before
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_manifest_entry_dot_dot_is_refused(folder, tmp_path):
    out, victim = folder
    forge(out / MANIFEST, "../x", {"../x": victim})
    assert_refused_and_untouched(out, tmp_path, "../x")
    assert victim.is_file()


def test_manifest_absolute_file_is_refused(folder, tmp_path):
    out, victim = folder
    forge(out / MANIFEST, str(victim), {str(victim): victim})
    assert_refused_and_untouched(out, tmp_path, str(victim))


def test_manifest_absolute_folder_with_right_sizes_and_sha256_is_refused(folder, tmp_path):
    out, _ = folder
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a")
    (data / "sub" / "b.txt").write_text("b")
    listed = {str(data / "a.txt"): data / "a.txt", str(data / "sub" / "b.txt"): data / "sub/b.txt"}
    forge(out / MANIFEST, str(data), listed, dirs=[str(data), str(data / "sub")])
    assert_refused_and_untouched(out, tmp_path, str(data))
    assert (data / "sub" / "b.txt").read_text() == "b"


def test_manifest_entry_through_a_symlink_leaving_the_folder_is_refused(folder, tmp_path):
    out, _ = folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_text("outside")
    (out / "goodnet_X9").symlink_to(elsewhere)
    forge(out / MANIFEST, "goodnet_X9", {"goodnet_X9/a.txt": elsewhere / "a.txt"})
    assert_refused_and_untouched(out, tmp_path, "goodnet_X9")


def test_eval_refuses_a_model_of_a_forged_folder_in_one_line(folder, tmp_path):
    out, victim = folder
    forge(out / MANIFEST, "../x", {"../x": victim})
    with pytest.raises(UnsafePathError, match="'../x'"):
        check_entry(out / "bprime_X2.keras")


def test_hand_made_commit_folder_naming_dot_dot_is_refused(tmp_path):
    out = tmp_path / "a" / "out"
    commit(out, {"bprime_X2.keras": "model"})
    near, far = tmp_path / "a" / "file", tmp_path / "file"  # pending/../../file, out/../../file
    for path in (near, far):
        path.write_text("the user's file")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest.update(entries=["../../file"], files={"../../file": meta(near)}, dirs=[])
    (out / COMMIT_DIR).mkdir()
    (out / COMMIT_DIR / MANIFEST).write_text(json.dumps(manifest))
    before = tree(tmp_path)
    for call in (lambda: commit(out, {"bprime_X4.keras": "new"}), lambda: recover(out),
                 lambda: check_out_dir(out)):
        with pytest.raises(UnsafePathError, match=r"'\.\./\.\./file'"):
            call()
    assert tree(tmp_path) == before and near.is_file() and far.is_file()


def test_a_symlink_at_the_commit_folder_name_is_refused(tmp_path):
    out = tmp_path / "out"
    commit(out, {"bprime_X2.keras": "model"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (out / COMMIT_DIR).symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="a symlink"):
        commit(out, {"bprime_X4.keras": "new"})
    assert (elsewhere / "keep.txt").read_text() == "mine"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cleanup_leaves_a_users_tmp_names_in_subfolders_and_files(tmp_path):
    out, dead = tmp_path / "out", dead_pid()
    commit(out, {"bprime_X2.keras": "model", "report/report.md": "report"})
    users = out / "data"
    (users / f".tmp-{dead}-x").parent.mkdir()
    (users / f".tmp-{dead}-x").write_text("a user's file in a subfolder")
    (users / f".tmp-{dead}-photos-2024").mkdir()
    (users / f".tmp-{dead}-photos-2024" / "a.jpg").write_text("jpg")
    (out / f".tmp-{dead}-notes.txt").write_text("a user's file at the top")  # a file: not ours
    (out / f".tmp-{dead}-held-back").mkdir()  # a folder holding more than a payload
    (out / f".tmp-{dead}-held-back" / "diary.txt").write_text("mine")
    # The package's own debris of a killed writer: a staging folder and an atomic write.
    staging = out / f".tmp-{dead}-run-20250101T000000Z-{dead}-ab12"
    (staging / "report").mkdir(parents=True)
    atomic = out / "report" / f".tmp-{dead}-report.json-k2j1x0ab"
    atomic.mkdir()
    (atomic / "payload.json").write_text("{")
    user_before = {rel: data for rel, data in tree(out).items()
                   if rel.startswith(("data/", f".tmp-{dead}-notes", f".tmp-{dead}-held"))}
    assert len(user_before) == 4

    assert sorted(clean_stale(out)) == sorted([staging, atomic])
    commit(out, {"bprime_X4.keras": "new"})
    after = tree(out)
    assert {rel: after.get(rel) for rel in user_before} == user_before
    assert not staging.exists() and not atomic.exists()


def declared_file(path: Path, count: int) -> Path:
    """A lab HDF5 file declaring `count` float32 images it never writes (HDF5 fills zeros)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(count, SHAPE[2], *SHAPE[:2]), dtype="float32",
                         chunks=(64, SHAPE[2], *SHAPE[:2]))
        f.create_dataset("label", data=np.zeros(count, "int64"))
    return path


@pytest.fixture(scope="module")
def big_declaration(tmp_path_factory) -> Path:
    """400,000 declared images (12.4 GB as float32), or more where memory is larger."""
    per_image = int(np.prod(SHAPE)) * 4 + 8
    available = available_memory() or 0
    count = max(400_000, int(MEMORY_FRACTION * available / per_image) + 1)
    return declared_file(tmp_path_factory.mktemp("h5") / "declared.h5", count)


@pytest.fixture(scope="module")
def deepid_file(tmp_path_factory) -> Path:
    """The package's DeepID (random weights, 5 classes) as a .keras file."""
    from keras_prune_guard.model.loading import deepid

    path = tmp_path_factory.mktemp("model") / "deepid.keras"
    deepid(num_classes=5).save(path)
    return path


def test_a_small_file_declaring_400000_images_is_refused_before_reading(big_declaration):
    assert big_declaration.stat().st_size < 12 * 2**20  # a few MB on disk
    with pytest.raises(DataError) as caught:
        load_lab_h5(big_declaration, image_shape=SHAPE)
    text = str(caught.value)
    assert "--stream" in text and "GB as float32 in memory" in text and "available" in text
    assert f"{MEMORY_FRACTION:.0%}" in text and "\n" not in text


def test_repair_without_stream_refuses_it_with_the_hint(big_declaration, deepid_file, tmp_path,
                                                         capsys):
    from keras_prune_guard.cli import main

    out = tmp_path / "out"
    code = main(["repair", "--model", str(deepid_file), "--valid", str(big_declaration),
                 "--fine-tune-epochs", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--stream" in err and "GB as float32" in err
    assert not out.exists()


def test_stream_refuses_a_count_the_file_cannot_hold(big_declaration, deepid_file, tmp_path,
                                                    capsys):
    from keras_prune_guard.cli import main

    code = main(["repair", "--model", str(deepid_file), "--valid", str(big_declaration),
                 "--stream", "--fine-tune-epochs", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "0 chunks stored of the" in err and "never written" in err


def test_a_partly_written_contiguous_file_is_refused(tmp_path):
    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(8, SHAPE[2], *SHAPE[:2]), dtype="uint8")  # never written
        f.create_dataset("label", data=np.zeros(8, "int64"))
    with pytest.raises(DataError, match="0 bytes stored of the"):
        load_lab_h5(path)


def unit_faces(path: Path, count: int = 12, scale: float = 1 / 255) -> Path:
    """Faces-like images (smooth random) scaled by `scale`, stored as float32."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(count, SHAPE[2], *SHAPE[:2])).astype("float32") * scale
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=x)
        f.create_dataset("label", data=np.zeros(count, "int64"))
    return path


def test_eval_images_refuses_unit_pixels(deepid_file, tmp_path, capsys):
    from keras_prune_guard.cli import main

    unit = unit_faces(tmp_path / "unit.h5")
    code = main(["eval", "--images", str(unit), "--model", str(deepid_file)])
    captured = capsys.readouterr()
    assert code == 2 and "within 0..1" in captured.err and "multiply them by 255" in captured.err
    assert captured.out == ""  # no class printed
    raw = unit_faces(tmp_path / "raw.h5", scale=1.0)
    assert main(["eval", "--images", str(raw), "--model", str(deepid_file)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 12
