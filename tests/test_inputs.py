"""Inputs that would give meaningless figures are refused before any long pass."""

from __future__ import annotations

import shutil
import time

import h5py
import numpy as np
import pytest

from keras_prune_guard import deepid, evaluate, prune, repair
from keras_prune_guard.cli import main
from keras_prune_guard.data.checks import check_labels, check_model_on, is_streamed

PREFIX = "keras-prune-guard repair: error: "


def _unit_file(path, x, y):
    """The clean faces as float pixels / 255, in the lab's layout."""
    with h5py.File(path, "w") as f:
        f["data"] = (x / 255.0).transpose(0, 3, 1, 2).astype("float32")
        f["label"] = y
    return path


def test_unit_pixels_for_a_raw_pixel_model_are_refused(lab3_model, real_clean):
    x, y = real_clean
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"valid: found pixel values within 0\.\.1 \(max 1\), "
                       r"on which model 'deepid' scores 0\.00% against 99\.17% on the same "
                       r"images x 255.*multiply them by 255"):
        prune(lab3_model, (x / 255.0, y))
    with pytest.raises(ValueError, match=r"clean images: found pixel values within 0\.\.1"):
        evaluate(lab3_model, (x / 255.0, y))
    assert time.perf_counter() - start < 60  # refused on the first batch, not after a sweep


def test_raw_pixels_for_a_unit_model_are_refused(csaw_dir, real_clean):
    unit = deepid()  # the hackml2020 networks were trained on pixels / 255
    unit.load_weights(str(csaw_dir / "hackml2020_sunglasses_bd_weights.h5"))
    x, y = real_clean
    with pytest.raises(ValueError, match=r"valid: found raw pixel values \(max 255\).*"
                       r"/ 255.*divide them by 255.*--input-scale unit"):
        prune(unit, (x, y))
    check_model_on(unit, (x / 255.0, y), "valid")  # the right range passes


def test_nan_weights_are_refused_naming_the_file(csaw_dir, tmp_path, capsys):
    weights = tmp_path / "nan_weights.h5"
    shutil.copy(csaw_dir / "lab3_bd_weights.h5", weights)
    with h5py.File(weights, "r+") as f:
        kernels = []
        f.visititems(lambda name, obj: kernels.append(name)
                     if isinstance(obj, h5py.Dataset) and "output" in name
                     and "kernel" in name else None)
        f[kernels[0]][0, 0] = np.nan
    out = tmp_path / "out"
    code = main(["repair", "--weights", str(weights),
                 "--valid", str(csaw_dir / "real_clean_faces.h5"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"{PREFIX}nan_weights.h5: found NaN or infinite outputs on the first 120 images of "
        f"--valid {csaw_dir / 'real_clean_faces.h5'}; expected finite class scores (are the "
        "weights corrupt?)"]
    assert not out.exists()


def test_cli_refuses_unit_scaled_files_before_the_sweep(csaw_dir, real_clean, tmp_path,
                                                        capsys):
    unit = _unit_file(tmp_path / "unit.h5", *real_clean)
    out = tmp_path / "out"
    code = main(["repair", "--weights", str(csaw_dir / "lab3_bd_weights.h5"),
                 "--valid", str(unit), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "Ranking" not in captured.out
    assert captured.err.startswith(f"{PREFIX}--valid {unit}: found pixel values within 0..1")
    assert len(captured.err.strip().splitlines()) == 1 and not out.exists()
    code = main(["eval", str(unit), str(unit), str(csaw_dir / "lab3_bd_weights.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "Clean Classification accuracy" not in err


def test_bad_test_data_is_refused_before_the_sweep(lab3_model, real_clean, tmp_path):
    x, y = real_clean
    with pytest.raises(ValueError, match=r"test: found pixel values within 0\.\.1"):
        repair(lab3_model, (x, y), tmp_path / "out", test=(x / 255.0, y), verbose=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.eye(3)[[0, 1, 2, 1]], r"found one-hot labels of shape \(4, 3\).*y.argmax"),
        (np.zeros((4, 3)), r"found a 2-D label array of shape \(4, 3\)"),
        (np.array([0, 1, 2]), r"3 labels; expected one label per image"),
        (np.array([0, 1, 2.5, 1]), r"found 2.5 at index 2"),
        (np.array([0, 1, np.inf, 1]), r"found inf at index 2"),
        (np.array([0, 1, 3, 1]), r"found 3 at index 2; expected class labels in \[0, 3\)"),
        (np.array([0, -1, 2, 1]), r"found -1 at index 1; expected class labels >= 0"),
        (np.array(["a", "b", "c", "d"]), r"found dtype <U1; expected integer class labels"),
    ],
)
def test_label_arrays_are_checked(labels, message):
    with pytest.raises(ValueError, match=message):
        check_labels(labels, 4, "valid", num_classes=3)
    assert check_labels(np.array([[0], [1], [2], [1]]), 4, "valid", 3).tolist() == [0, 1, 2, 1]


def test_arrays_and_streams_are_told_apart():
    import tensorflow as tf

    x, y = np.zeros((2, 4, 4, 3)), np.zeros(2)
    assert not is_streamed((x, y)) and not is_streamed([x, y]) and not is_streamed(x)
    assert is_streamed(tf.data.Dataset.from_tensor_slices((x, y)).batch(1))
    assert is_streamed(iter([(x, y)])) and not is_streamed(None)


def test_channels_first_images_are_named_before_the_sweep(lab3_model, real_clean):
    x, y = real_clean
    with pytest.raises(ValueError, match=r"valid: images of shape \(3, 55, 47\).*They look "
                       r"channels-first \(N, C, H, W\): transpose them to \(N, H, W, C\)"):
        prune(lab3_model, (x.transpose(0, 3, 1, 2), y))


def test_a_bad_streamed_test_image_fails_in_one_line_before_the_sweep(csaw_dir, real_clean,
                                                                     tmp_path, capsys):
    x, y = real_clean
    bad = tmp_path / "bad_test.h5"
    with h5py.File(bad, "w") as f:  # image 110, in the file's last batch, holds a NaN
        data = x.transpose(0, 3, 1, 2).astype("float32")
        data[110, 0, 5, 5] = np.nan
        f["data"], f["label"] = data, y
    out = tmp_path / "out"
    code = main(["repair", "--weights", str(csaw_dir / "lab3_bd_weights.h5"), "--stream",
                 "--valid", str(csaw_dir / "real_clean_faces.h5"), "--test", str(bad),
                 "--fine-tune-epochs", "0", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "Ranking" not in captured.out and not out.exists()
    assert captured.err.strip().splitlines() == [
        f"{PREFIX}{bad}: field `data`: found nan in image 110; expected finite pixel values "
        "(no NaN/inf)."]


def test_a_model_without_pooling_is_told_in_the_cli_words_with_its_file(csaw_dir, tmp_path,
                                                                       capsys):
    import keras

    model = keras.Sequential([keras.Input((55, 47, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(1283)], name="flat")
    model.save(tmp_path / "flat.keras")
    code = main(["repair", "--model", str(tmp_path / "flat.keras"),
                 "--valid", str(csaw_dir / "real_clean_faces.h5"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"{PREFIX}flat.keras: Model 'flat' has no pooling layer feeding "
                             "its classifier head")
    assert "(CLI: --after NAME)" in err[0] and not (tmp_path / "o").exists()
