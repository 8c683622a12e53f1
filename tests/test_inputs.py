"""Inputs that would give meaningless figures are refused before any long pass."""

from __future__ import annotations

import re
import shutil
import time

import h5py
import keras
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


def _accuracy(model, x, y) -> float:
    """The model's accuracy on `(x, y)` in percent."""
    classes = np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)
    return float(np.mean(classes == y) * 100)


def test_unit_pixels_for_a_raw_pixel_model_are_refused(gen_model, gen_clean):
    x, y = gen_clean
    unit, raw = _accuracy(gen_model, x / 255.0, y), _accuracy(gen_model, x, y)
    assert raw > 90 and unit < 50  # the figures the message must quote
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"valid: found pixel values within 0\.\.1 \(max 1\), "
                       rf"on which model 'deepid' scores {re.escape(f'{unit:.2f}%')} against "
                       rf"{re.escape(f'{raw:.2f}%')} on the same images x 255.*"
                       r"multiply them by 255"):
        prune(gen_model, (x / 255.0, y))
    with pytest.raises(ValueError, match=r"clean images: found pixel values within 0\.\.1"):
        evaluate(gen_model, (x / 255.0, y))
    assert time.perf_counter() - start < 60  # refused on the first batch, not after a sweep


def test_raw_pixels_for_a_unit_model_are_refused(csaw_dir, real_clean):
    # A real network trained on pixels / 255: it scores 59/120 on raw pixels. The generated
    # BadNet's own DeepID (behind its Rescaling) still scores 78.89% of its 90 clean faces on
    # raw pixels, above the 75% below which the check looks, so it cannot stand in here.
    unit = deepid()  # the hackml2020 networks were trained on pixels / 255
    unit.load_weights(str(csaw_dir / "hackml2020_sunglasses_bd_weights.h5"))
    x, y = real_clean
    with pytest.raises(ValueError, match=r"valid: found raw pixel values \(max 255\).*"
                       r"/ 255.*divide them by 255.*--input-scale unit"):
        prune(unit, (x, y))
    check_model_on(unit, (x / 255.0, y), "valid")  # the right range passes


def _output_kernel(weights_file) -> str:
    """The output layer's kernel in a Keras 3 `.weights.h5` file: the one (160, 10) dataset.

    Keras 3 names the layers by class (`layers/dense_2/vars/0`), not `output`.
    """
    kernels = []
    with h5py.File(weights_file, "r") as f:
        f.visititems(lambda name, obj: kernels.append(name)
                     if isinstance(obj, h5py.Dataset) and obj.shape == (160, 10) else None)
    assert len(kernels) == 1, kernels
    return kernels[0]


def test_nan_weights_are_refused_naming_the_file(gen_dir, tmp_path, capsys):
    weights = tmp_path / "nan.weights.h5"
    shutil.copy(gen_dir / "bd_weights.weights.h5", weights)
    kernel = _output_kernel(weights)
    with h5py.File(weights, "r+") as f:
        f[kernel][0, 0] = np.nan
    out = tmp_path / "out"
    code = main(["repair", "--weights", str(weights),
                 "--valid", str(gen_dir / "clean_faces.h5"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"{PREFIX}nan.weights.h5: found NaN or infinite outputs on the first 90 images of "
        f"--valid {gen_dir / 'clean_faces.h5'}; expected finite class scores (are the "
        "weights corrupt?)"]
    assert not out.exists()


def test_cli_refuses_unit_scaled_files_before_the_sweep(gen_dir, gen_clean, tmp_path, capsys):
    unit = _unit_file(tmp_path / "unit.h5", *gen_clean)
    out = tmp_path / "out"
    code = main(["repair", "--weights", str(gen_dir / "bd_weights.weights.h5"),
                 "--valid", str(unit), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "Ranking" not in captured.out
    assert captured.err.startswith(f"{PREFIX}--valid {unit}: found pixel values within 0..1")
    assert len(captured.err.strip().splitlines()) == 1 and not out.exists()
    code = main(["eval", str(unit), str(unit), str(gen_dir / "bd_weights.weights.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "Clean Classification accuracy" not in err


def test_bad_test_data_is_refused_before_the_sweep(gen_model, gen_clean, tmp_path):
    x, y = gen_clean
    with pytest.raises(ValueError, match=r"test: found pixel values within 0\.\.1"):
        repair(gen_model, (x, y), tmp_path / "out", test=(x / 255.0, y), verbose=0)
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


def test_channels_first_images_are_named_before_the_sweep(gen_model, gen_clean):
    x, y = gen_clean
    with pytest.raises(ValueError, match=r"valid: images of shape \(3, 55, 47\).*They look "
                       r"channels-first \(N, C, H, W\): transpose them to \(N, H, W, C\)"):
        prune(gen_model, (x.transpose(0, 3, 1, 2), y))


def test_a_bad_streamed_test_image_fails_in_one_line_before_the_sweep(gen_dir, gen_clean,
                                                                     tmp_path, capsys):
    x, y = gen_clean
    bad = tmp_path / "bad_test.h5"
    with h5py.File(bad, "w") as f:  # image 85 of 90, near the file's end, holds a NaN
        data = x.transpose(0, 3, 1, 2).astype("float32")
        data[85, 0, 5, 5] = np.nan
        f["data"], f["label"] = data, y
    out = tmp_path / "out"
    code = main(["repair", "--weights", str(gen_dir / "bd_weights.weights.h5"), "--stream",
                 "--valid", str(gen_dir / "clean_faces.h5"), "--test", str(bad),
                 "--fine-tune-epochs", "0", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "Ranking" not in captured.out and not out.exists()
    assert captured.err.strip().splitlines() == [
        f"{PREFIX}{bad}: field `data`: found nan in image 85; expected finite pixel values "
        "(no NaN/inf)."]


def test_a_model_without_pooling_is_told_in_the_cli_words_with_its_file(gen_dir, tmp_path,
                                                                       capsys):
    model = keras.Sequential([keras.Input((55, 47, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(10)], name="flat")
    model.save(tmp_path / "flat.keras")
    code = main(["repair", "--model", str(tmp_path / "flat.keras"),
                 "--valid", str(gen_dir / "clean_faces.h5"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"{PREFIX}flat.keras: Model 'flat' has no pooling layer feeding "
                             "its classifier head")
    assert "(CLI: --after NAME)" in err[0] and not (tmp_path / "o").exists()
