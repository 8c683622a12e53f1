"""Data loading: the lab's HDF5 layout and image folders, every bad input named clearly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from keras_prune_guard.data.files import (
    DataError,
    h5_info,
    iter_lab_h5,
    lab_h5_dataset,
    load_images,
    load_inputs,
    load_lab_h5,
    write_lab_h5,
)

SHAPE = (55, 47, 3)


def write_h5(path: Path, **datasets) -> Path:
    """Writes raw datasets with h5py (no clipping or casting, unlike write_lab_h5)."""
    with h5py.File(path, "w") as f:
        for name, values in datasets.items():
            f.create_dataset(name, data=values)
    return path


def lab_data(n=3, c=3, h=55, w=47, dtype="uint8", seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, c, h, w)).astype(dtype)


# --- the real lab files --------------------------------------------------------------------


def test_real_clean_faces_load_and_match_the_raw_file(csaw_dir, real_clean):
    path = csaw_dir / "real_clean_faces.h5"
    info = h5_info(path, image_shape=SHAPE, num_classes=1283)
    assert info["count"] == 120
    assert info["image_shape"] == SHAPE
    assert info["data_dtype"] == "uint8" and info["label_dtype"] == "int64"
    assert 0 <= info["label_range"][0] <= info["label_range"][1] < 1283
    assert {"data", "label"} <= set(info["fields"])

    x, y = load_lab_h5(path, image_shape=SHAPE, num_classes=1283)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape == (120, *SHAPE)
    np.testing.assert_array_equal(x, real_clean[0])
    np.testing.assert_array_equal(y, real_clean[1])


# --- reading in batches ---------------------------------------------------------------------


def test_iter_lab_h5_yields_checked_batches_channels_last(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(10, 6, 5, 3)).astype("uint8")
    labels = np.arange(10) % 4
    path = tmp_path / "small.h5"
    write_lab_h5(path, images, labels, true_label=labels)

    batches = list(iter_lab_h5(path, batch_size=4, image_shape=(6, 5, 3), num_classes=4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert all(x.dtype == np.float32 and y.dtype == np.int64 for x, y in batches)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), images)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)


def test_iter_lab_h5_reads_lazily_and_names_the_first_bad_image(tmp_path):
    data = lab_data(n=6, h=4, w=4, dtype="float32")
    data[4, 1, 2, 3] = np.nan
    path = write_h5(tmp_path / "nan_late.h5", data=data, label=np.zeros(6, "int64"))

    it = iter_lab_h5(path, batch_size=2)
    first, _ = next(it)  # batches before the bad one are served
    np.testing.assert_array_equal(first, data[:2].transpose(0, 2, 3, 1))
    next(it)
    with pytest.raises(DataError) as err:
        next(it)
    message = str(err.value)
    assert "nan_late.h5" in message and "`data`" in message
    assert "nan in image 4" in message and "finite pixel values" in message


def test_labels_false_allows_a_file_without_labels(tmp_path):
    data = lab_data(n=3, h=4, w=4)
    path = write_h5(tmp_path / "unlabelled.h5", data=data)
    (x, y), = list(iter_lab_h5(path, labels=False))
    assert y is None
    np.testing.assert_array_equal(x, data.transpose(0, 2, 3, 1))
    with pytest.raises(DataError, match="no such dataset"):
        load_lab_h5(path)


def test_column_labels_and_integral_float_labels_are_accepted(tmp_path):
    path = write_h5(tmp_path / "col.h5", data=lab_data(n=3, h=4, w=4),
                    label=np.array([[2.0], [0.0], [1.0]]))
    _, y = load_lab_h5(path, num_classes=3)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [2, 0, 1])


def test_grey_files_keep_one_channel(tmp_path):
    data = lab_data(n=2, c=1, h=4, w=4)
    path = write_h5(tmp_path / "grey.h5", data=data, label=np.array([0, 1]))
    x, _ = load_lab_h5(path, image_shape=(4, 4, 1))
    assert x.shape == (2, 4, 4, 1)


def test_bad_arguments_name_the_argument(tmp_path):
    path = tmp_path / "ok.h5"
    write_lab_h5(path, np.zeros((2, 4, 4, 3)), [0, 1])
    with pytest.raises(ValueError, match="batch_size must be a positive int. Received: batch_"):
        next(iter_lab_h5(path, batch_size=0))
    with pytest.raises(ValueError, match=r"image_shape must be \(height, width, channels\)"):
        h5_info(path, image_shape=(4, 4))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        h5_info(path, num_classes=0)


# --- the bad input matrix -------------------------------------------------------------------


def _not_hdf5(p):
    p.write_text("this is not an HDF5 file\n")


def _truncated(p):
    write_lab_h5(p, np.zeros((50, 55, 47, 3), "uint8"), np.zeros(50, "int64"))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _dataset_file(**datasets):
    return lambda p: write_h5(p, **datasets)


GOOD = lab_data()
LABELS = np.array([0, 1, 2])
NAN = GOOD.astype("float32")
NAN[1, 0, 0, 0] = np.nan
INF = GOOD.astype("float64")
INF[2, 2, 10, 10] = np.inf
BIG = GOOD.astype("float32")
BIG[0, 0, 0, 0] = 300.0

# (case, file builder, load kwargs, field, pieces the message must hold: what was found and
#  what was expected; the file name is checked for every case)
BAD_INPUTS = [
    ("missing", None, {}, None, ["no such file", "expected an existing HDF5 file"]),
    ("not_hdf5", _not_hdf5, {}, None, ["h5py cannot open", "expected a readable HDF5 file"]),
    ("truncated", _truncated, {}, None, ["h5py cannot open", "truncated",
                                         "expected a readable HDF5 file"]),
    ("no_data", _dataset_file(label=LABELS), {}, "data",
     ["no such dataset (the file holds ['label'])", "expected a dataset named `data`"]),
    ("no_label", _dataset_file(data=GOOD), {}, "label",
     ["no such dataset (the file holds ['data'])", "expected a dataset named `label`"]),
    ("rank3", _dataset_file(data=GOOD[:, 0], label=LABELS), {}, "data",
     ["shape (3, 55, 47) (rank 3)", "expected rank 4 (N, C, H, W)"]),
    ("channels_last", _dataset_file(data=GOOD.transpose(0, 2, 3, 1), label=LABELS), {}, "data",
     ["55 channels on axis 1", "looks channels-last", "expected (N, C, H, W) with C = 3 or 1"]),
    ("wrong_size", _dataset_file(data=lab_data(h=32, w=32), label=LABELS),
     {"image_shape": SHAPE}, "data",
     ["images of (H, W, C) (32, 32, 3)", "expected (55, 47, 3), the model's input"]),
    ("wrong_channels", _dataset_file(data=lab_data(c=1), label=LABELS),
     {"image_shape": SHAPE}, "data",
     ["images of (H, W, C) (55, 47, 1)", "expected (55, 47, 3)"]),
    ("label_too_big", _dataset_file(data=GOOD, label=np.array([0, 1283, 5])),
     {"num_classes": 1283}, "label", ["1283 at index 1", "expected class labels in [0, 1283)"]),
    ("label_negative", _dataset_file(data=GOOD, label=np.array([0, 1, -1])), {}, "label",
     ["-1 at index 2", "expected class labels >= 0"]),
    ("label_fraction", _dataset_file(data=GOOD, label=np.array([0.0, 1.5, 2.0])), {}, "label",
     ["1.5 at index 1 (dtype float64)", "expected integer class labels"]),
    ("label_nan", _dataset_file(data=GOOD, label=np.array([0.0, np.nan, 2.0])), {}, "label",
     ["nan at index 1", "expected integer class labels"]),
    ("label_strings", _dataset_file(data=GOOD, label=np.array([b"a", b"b", b"c"])), {}, "label",
     ["dtype |S1", "expected integer class labels"]),
    ("nan_pixel", _dataset_file(data=NAN, label=LABELS), {}, "data",
     ["nan in image 1", "expected finite pixel values"]),
    ("inf_pixel", _dataset_file(data=INF, label=LABELS), {}, "data",
     ["inf in image 2", "expected finite pixel values"]),
    ("pixel_300", _dataset_file(data=BIG, label=LABELS), {}, "data",
     ["pixel values", "300.0 in image 0", "expected raw pixel values within 0..255"]),
    ("empty", _dataset_file(data=np.zeros((0, 3, 55, 47), "uint8"),
                            label=np.zeros(0, "int64")), {}, "data",
     ["0 images (shape (0, 3, 55, 47))", "expected at least one image"]),
    ("lengths", _dataset_file(data=GOOD, label=LABELS[:2]), {}, "label",
     ["2 labels for 3 images", "expected one label per image"]),
]


@pytest.mark.parametrize(
    "builder, kwargs, field, pieces",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_raises_a_data_error_naming_file_found_and_expected(
    tmp_path, builder, kwargs, field, pieces
):
    path = tmp_path / "input_file.h5"
    if builder is not None:
        builder(path)
    with pytest.raises(DataError) as err:
        load_lab_h5(path, **kwargs)
    message = str(err.value)
    assert str(path) in message
    assert err.value.path == str(path)
    assert err.value.field == field
    if field is not None:
        assert f"field `{field}`" in message
    for piece in pieces:
        assert piece in message, (piece, message)
    # load_inputs dispatches .h5 to the same checks; DataError is a ValueError.
    with pytest.raises(ValueError, match="input_file.h5"):
        load_inputs(path, **kwargs)


# --- hypothesis: either the data as written, or a DataError --------------------------------

_PIXELS = {
    "uint8": st.integers(0, 255),
    "int64": st.integers(0, 255),
    "float32": st.floats(0, 255, width=32),
    "float64": st.floats(0, 255),
}
_BAD_PIXELS = {"int64": [-3, 256, 10**6], "float32": [np.nan, np.inf, -0.5],
               "float64": [np.nan, -np.inf, 255.5]}


@st.composite
def lab_files(draw):
    """Mostly well-formed files, each with a fair chance of one thing going wrong."""
    dtype = draw(st.sampled_from(sorted(_PIXELS)))
    n = draw(st.sampled_from([0, 1, 2, 3, 4, 4, 4, 4]))
    c = draw(st.sampled_from([1, 2, 3, 3, 3, 3, 3, 3]))
    h, w = draw(st.sampled_from([0, 1, 2, 3, 3, 3, 3])), draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(n, c, h)] + [(n, c, h, w)] * 10 + [(n, c, h, w, 1)]))
    data = draw(hnp.arrays(dtype, shape, elements=_PIXELS[dtype]))
    if data.size and dtype in _BAD_PIXELS and draw(st.integers(0, 5)) == 0:
        data.flat[draw(st.integers(0, data.size - 1))] = draw(st.sampled_from(_BAD_PIXELS[dtype]))
    n_labels = max(0, n + draw(st.sampled_from([0] * 12 + [1, -1])))
    label_dtype = draw(st.sampled_from(["int64", "uint8", "float64"]))
    labels = draw(hnp.arrays(label_dtype, (n_labels,), elements=st.integers(0, 2)))
    if n_labels and draw(st.integers(0, 5)) == 0:
        bad = [1.5, np.nan] if label_dtype == "float64" else [-1] if label_dtype == "int64" else []
        if bad:
            labels[draw(st.integers(0, n_labels - 1))] = draw(st.sampled_from(bad))
    num_classes = draw(st.sampled_from([None, None, 3, 6, 2]))
    return data, labels, num_classes


def _should_load(data, labels, num_classes) -> bool:
    if data.ndim != 4 or data.shape[1] not in (1, 3) or 0 in data.shape:
        return False
    if len(labels) != len(data):
        return False
    with np.errstate(invalid="ignore"):
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            return False
        if (labels < 0).any() or (num_classes is not None and (labels >= num_classes).any()):
            return False
        return bool(np.isfinite(data).all() and (data >= 0).all() and (data <= 255).all())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lab_files())
def test_loader_gives_the_written_data_or_a_data_error(case):
    data, labels, num_classes = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write_h5(Path(tmp) / "random.h5", data=data, label=labels)
        valid = _should_load(data, labels, num_classes)
        event("loads" if valid else "DataError")
        if valid:
            x, y = load_lab_h5(path, num_classes=num_classes)
            np.testing.assert_array_equal(x, data.astype("float32").transpose(0, 2, 3, 1))
            assert x.dtype == np.float32 and y.dtype == np.int64
            np.testing.assert_array_equal(y, labels.astype("int64"))
        else:
            with pytest.raises(DataError, match="random.h5"):
                load_lab_h5(path, num_classes=num_classes)


# --- images ---------------------------------------------------------------------------------


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype("uint8")


def test_load_images_converts_modes_to_rgb_and_sorts_names(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "b_rgb.png")
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, "uint8")], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a_rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "c_grey.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "d_palette.png")
    Image.fromarray(rgb).save(tmp_path / "e_photo.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"not an image, skipped as a dotfile")

    x, names = load_images(tmp_path, image_shape=(6, 5, 3))
    assert names == ["a_rgba.png", "b_rgb.png", "c_grey.png", "d_palette.png", "e_photo.JPG"]
    assert x.shape == (5, 6, 5, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], rgb)  # alpha dropped
    np.testing.assert_array_equal(x[1], rgb)
    np.testing.assert_array_equal(x[2], np.repeat(rgb[..., :1], 3, axis=-1))  # grey copied
    assert x[3].min() >= 0 and x[3].max() <= 255
    assert np.abs(x[4] - rgb).mean() < 40  # lossy but the same picture

    one, names = load_images(tmp_path / "b_rgb.png")
    assert names == ["b_rgb.png"]
    np.testing.assert_array_equal(one[0], rgb)

    grey, _ = load_images(tmp_path / "c_grey.png", image_shape=(6, 5, 1))
    assert grey.shape == (1, 6, 5, 1)


def test_load_inputs_dispatches_on_the_suffix(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "face.png")
    x, y = load_inputs(tmp_path / "face.png", image_shape=(6, 5, 3))
    assert x.shape == (1, 6, 5, 3) and y is None

    write_lab_h5(tmp_path / "set.HDF5", np.stack([_rgb(), _rgb(seed=1)]), [3, 1])
    x, y = load_inputs(tmp_path / "set.HDF5", image_shape=(6, 5, 3), num_classes=4)
    np.testing.assert_array_equal(y, [3, 1])
    np.testing.assert_array_equal(x[1], _rgb(seed=1))


def test_image_of_another_size_is_an_error_not_resized(tmp_path):
    Image.fromarray(_rgb(h=55, w=47)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(h=64, w=64)).save(tmp_path / "b.png")
    with pytest.raises(DataError) as err:
        load_images(tmp_path / "b.png", image_shape=SHAPE)
    message = str(err.value)
    assert "b.png" in message and "(64, 64, 3)" in message
    assert "expected (55, 47, 3), as the model's input (images are not resized)" in message

    with pytest.raises(DataError) as err:
        load_images(tmp_path)  # no image_shape: the first image sets the size
    message = str(err.value)
    assert "b.png" in message and "(64, 64, 3)" in message and "the first image a.png" in message


@pytest.mark.parametrize(
    "case, pieces",
    [
        ("empty_folder", ["empty folder (no images among its 0 entries)",
                          "expected at least one image file"]),
        ("only_text", ["empty folder (no images among its 1 entries)"]),
        ("missing", ["no such file or folder", "expected an image file or a folder"]),
        ("corrupt_png", ["an unreadable image", "expected a valid PNG or JPEG file"]),
        ("gif", ["suffix '.gif'", "expected an image (.png, .jpg, .jpeg) or an HDF5 file"]),
        ("sixteen_bit", ["Pillow image mode 'I;16'", "expected an 8-bit RGB"]),
    ],
)
def test_bad_images_raise_a_data_error_naming_the_path(tmp_path, case, pieces):
    folder = tmp_path / "inputs"
    folder.mkdir()
    target = folder
    if case == "only_text":
        (folder / "readme.txt").write_text("no images here")
    elif case == "missing":
        target = folder / "nothing_here"
    elif case == "corrupt_png":
        target = folder / "broken.png"
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif case == "gif":
        target = folder / "anim.gif"
        Image.fromarray(_rgb()).save(target)
    elif case == "sixteen_bit":
        target = folder / "deep.png"
        Image.fromarray(np.full((6, 5), 40000, "uint16")).save(target)
    with pytest.raises(DataError) as err:
        load_inputs(target, image_shape=(6, 5, 3))
    message = str(err.value)
    assert str(target) in message
    for piece in pieces:
        assert piece in message, (piece, message)


def test_write_lab_h5_round_trips_with_extra_fields(tmp_path):
    images = np.stack([_rgb(), _rgb(seed=2)])
    write_lab_h5(tmp_path / "w.h5", images, [1, 0], true_label=[5, -1])
    x, y = load_lab_h5(tmp_path / "w.h5", image_shape=(6, 5, 3))
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [1, 0])
    with h5py.File(tmp_path / "w.h5") as f:
        assert f["data"].shape == (2, 3, 6, 5) and f["data"].dtype == np.uint8
        np.testing.assert_array_equal(f["true_label"][:], [5, -1])


# --- reading through tf.data ----------------------------------------------------------------


def test_lab_h5_dataset_streams_the_checked_batches(tmp_path, gen_dir, gen_clean):
    import tensorflow as tf

    dataset = lab_h5_dataset(gen_dir / "clean_faces.h5", 40, image_shape=SHAPE, num_classes=10)
    assert isinstance(dataset, tf.data.Dataset)
    assert int(dataset.cardinality()) == 3
    assert dataset.element_spec[0].shape.as_list() == [None, *SHAPE]
    for _ in range(2):  # each pass reopens the file
        got = [(x.numpy(), y.numpy()) for x, y in dataset]
        assert [len(x) for x, _ in got] == [40, 40, 10]
        assert got[0][0].dtype == np.float32 and got[0][1].dtype == np.int64
        np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), gen_clean[0])
        np.testing.assert_array_equal(np.concatenate([y for _, y in got]), gen_clean[1])

    images = np.random.default_rng(3).integers(0, 256, size=(5, 6, 5, 3)).astype("uint8")
    path = tmp_path / "nolabel.h5"
    write_h5(path, data=images.transpose(0, 3, 1, 2))
    only_x = lab_h5_dataset(path, 2, labels=False)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x in only_x]), images)


def test_lab_h5_dataset_checks_the_file_at_once_and_names_bad_images(tmp_path):
    import tensorflow as tf

    with pytest.raises(DataError, match="no such file"):
        lab_h5_dataset(tmp_path / "missing.h5")
    wrong = write_h5(tmp_path / "small.h5", data=lab_data(n=2, h=4, w=4),
                     label=np.zeros(2, "int64"))
    with pytest.raises(DataError, match=r"images of \(H, W, C\) \(4, 4, 3\)"):
        lab_h5_dataset(wrong, image_shape=SHAPE)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        lab_h5_dataset(wrong, 0)
    data = lab_data(n=6, h=4, w=4, dtype="float32")
    data[4, 0, 1, 1] = 300.0
    late = write_h5(tmp_path / "late.h5", data=data, label=np.zeros(6, "int64"))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"late.h5: field `data`: found pixel values .* in image 4"):
        for _ in lab_h5_dataset(late, 2):
            pass
