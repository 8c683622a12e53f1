"""Property-based tests (hypothesis): the mask logic and the HDF5 loader.

Random inputs give either the correct result or one of the documented errors
(`ValueError` from `ChannelMask`, `DataError` from the loader), never another
exception. Bounded (about 40 examples each, no deadline) for CI on 2 cores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings

from keras_prune_guard.data.files import DataError, iter_lab_h5, load_lab_h5
from keras_prune_guard.layers import ChannelMask

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- ChannelMask ------------------------------------------------------------------------------

FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("uint8", "int32", "int64")
# Channel lists as users pass them: in range, out of range, negative, repeated.
channel_lists = st.lists(st.integers(-3, 20), max_size=8)


def channels_for(channels: int):
    """Mostly valid channel lists for a mask of `channels`, sometimes with a bad index."""
    valid = st.integers(0, channels - 1)
    return st.lists(st.one_of(valid, valid, valid, valid, valid, valid,
                              st.integers(-3, channels + 3)), min_size=1, max_size=8)


@st.composite
def masks_and_inputs(draw):
    channels = draw(st.integers(1, 12))
    batch_shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES + ("bool",)))
    if dtype == "bool":
        elements = st.booleans()
    elif dtype in INT_DTYPES:
        elements = st.integers(0, 200)
    else:  # finite values; NaN * 0 stays NaN, see test_nan_in_a_pruned_channel_stays_nan
        # (no subnormals: TensorFlow's CPU kernels flush them to zero)
        elements = st.floats(-1e4, 1e4, width=16 if dtype == "float16" else 32,
                             allow_subnormal=False)
    x = draw(hnp.arrays(dtype, (*batch_shape, channels), elements=elements))
    operations = draw(st.lists(
        st.tuples(st.sampled_from(["prune", "prune", "set_pruned", "set_pruned", "restore"]),
                  channels_for(channels)),
        min_size=1, max_size=4,
    ))
    return channels, x, operations


def _apply(mask: ChannelMask, oracle: set[int], op: str, chans: list[int]) -> set[int]:
    """Runs one operation on the layer and on a plain-set model of it; returns the new set."""
    valid = all(0 <= c < mask.channels for c in chans)
    if op == "restore":
        mask.restore()
        return set()
    if not valid:
        before = mask.mask_values().copy()
        with pytest.raises(ValueError, match=r"has channels 0\.\.\d+\. Received out-of-range"):
            getattr(mask, op)(chans)
        np.testing.assert_array_equal(mask.mask_values(), before)  # nothing half-applied
        event("out-of-range refused")
        return oracle
    getattr(mask, op)(chans)
    return oracle | set(chans) if op == "prune" else set(chans)


@SETTINGS
@given(masks_and_inputs())
def test_mask_gives_the_exact_product_or_a_value_error(case):
    channels, x, operations = case
    layer = ChannelMask(name="m")
    layer.build(x.shape)
    oracle: set[int] = set()
    for op, chans in operations:
        oracle = _apply(layer, oracle, op, chans)
        assert layer.pruned_channels() == sorted(oracle)
        values = layer.mask_values()
        assert values.dtype == np.float32 and set(np.unique(values)) <= {0.0, 1.0}
        assert [int(c) for c in np.flatnonzero(values == 0)] == sorted(oracle)

    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == x.shape
    kept = [c for c in range(channels) if c not in oracle]
    pruned = sorted(oracle)
    # Floats are computed in the layer's float32; integers and bools keep their dtype.
    want = x.astype("float32") if x.dtype.kind == "f" else x
    assert out.dtype == want.dtype
    assert (out[..., pruned] == 0).all()
    np.testing.assert_array_equal(out[..., kept], want[..., kept])

    # Config round trip, built and unbuilt, keeps exactly the pruned channels.
    for clone in (ChannelMask.from_config(layer.get_config()),
                  keras.saving.deserialize_keras_object(
                      keras.saving.serialize_keras_object(layer))):
        assert clone.pruned_channels() == pruned
        if not clone.built:  # serialize_keras_object keeps the build config
            clone.build(x.shape)
        assert clone.pruned_channels() == pruned
        np.testing.assert_array_equal(clone.mask_values(), layer.mask_values())
    event("none pruned" if not pruned else "all pruned" if not kept else "some pruned")
    event(f"dtype {x.dtype}")


def test_nan_in_a_pruned_channel_stays_nan():
    """Documents a limit of masking by multiplication: NaN * 0 is NaN (inputs are checked)."""
    layer = ChannelMask(pruned_channels=[0])
    out = keras.ops.convert_to_numpy(layer(np.array([[np.nan, 1.0]], "float32")))
    assert np.isnan(out[0, 0]) and out[0, 1] == 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), channel_lists, st.integers(1, 9), st.integers(0, 3))
def test_mask_arguments_fixed_at_build_are_checked_like_prune(channels, initial, seen, rank):
    x = np.ones((2, channels), "float32")
    if all(0 <= c < channels for c in initial):
        layer = ChannelMask(pruned_channels=initial)
        layer(x)
        assert layer.pruned_channels() == sorted(set(initial))
    else:  # refused when constructed (negative) or when built (too large)
        with pytest.raises(ValueError, match="pruned_channels|out-of-range"):
            ChannelMask(pruned_channels=initial)(x)
        layer = ChannelMask()
        layer(x)
    if seen != channels:  # another channel count: Keras's input check, not a TF op error
        with pytest.raises(ValueError):
            layer(np.ones((2, seen), "float32"))
    if rank == 0:
        with pytest.raises(ValueError, match="channel axis"):
            ChannelMask()(np.float32(1.0))


# --- the HDF5 loader -------------------------------------------------------------------------
# tests/test_data.py::test_loader_gives_the_written_data_or_a_data_error draws well-formed and
# broken files of four dtypes; this one adds the dtypes an attacker could store (bool, complex,
# bytes, small ints, float16), an `image_shape` that may not fit, and the batched reader.

PIXEL_DTYPES = ("uint8", "int8", "uint16", "int64", "float16", "float32", "float64",
                "bool", "complex64", "S1")
LABEL_DTYPES = ("int64", "uint8", "int8", "float32", "bool", "S1")


def _elements(dtype: str):
    """Values of `dtype` a valid file could hold (bytes and complex never are valid)."""
    if dtype == "bool":
        return st.booleans()
    if dtype == "S1":
        return st.sampled_from([b"a", b"7", b"-"])
    if dtype.startswith("complex"):
        return st.complex_numbers(max_magnitude=255, allow_nan=False, width=64)
    if dtype.startswith("float"):
        return st.floats(0, 255, width=16 if dtype == "float16" else 32)
    return st.integers(0, min(int(np.iinfo(dtype).max), 255))


#: Out-of-range or non-finite values one pixel may be given, per dtype.
BAD_PIXELS = {"int8": [-1, -128], "uint16": [256, 65535], "int64": [-5, 300, 10**9],
              "float16": [np.nan, np.inf, -1.0], "float32": [np.nan, -np.inf, 255.5],
              "float64": [np.nan, np.inf, -1e-3, 1e6]}


FAULTS = ("pixel dtype", "no images", "channels", "rank", "pixel value", "label dtype",
          "label count", "label value", "image_shape", "num_classes")


@st.composite
def h5_files(draw):
    """Valid files half of the time; otherwise wrong in one drawn way (or two)."""
    faults = set(draw(st.lists(st.sampled_from(FAULTS), max_size=2))) \
        if draw(st.booleans()) else set()
    dtype = draw(st.sampled_from(
        PIXEL_DTYPES[7:] if "pixel dtype" in faults else PIXEL_DTYPES[:7]))
    n = 0 if "no images" in faults else draw(st.integers(1, 4))
    c = draw(st.sampled_from([2, 4] if "channels" in faults else [1, 3]))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(n, c, h), (n, c, h, w, 1), (n, h, w, c, 1)]
                                 if "rank" in faults else [(n, c, h, w)]))
    data = draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))
    if "pixel value" in faults and data.size and dtype in BAD_PIXELS:
        data.flat[draw(st.integers(0, data.size - 1))] = draw(st.sampled_from(BAD_PIXELS[dtype]))
    label_dtype = draw(st.sampled_from(
        LABEL_DTYPES[4:] if "label dtype" in faults else LABEL_DTYPES[:4]))
    n_labels = draw(st.sampled_from([n + 1, max(0, n - 1)])) if "label count" in faults else n
    labels = draw(hnp.arrays(label_dtype, (n_labels,), elements=(
        _elements(label_dtype) if label_dtype in ("bool", "S1") else st.integers(0, 2))))
    if "label value" in faults and n_labels and label_dtype != "uint8":
        bad = [-1, 1.5, np.nan, np.inf] if label_dtype == "float32" else [-1, -100]
        labels[draw(st.integers(0, n_labels - 1))] = draw(st.sampled_from(bad))
    image_shape = draw(st.sampled_from(
        [(h + 1, w, c), (h, w + 1, c), (h, w, 1 if c != 1 else 3)] if "image_shape" in faults
        else [None, (h, w, c)]))
    num_classes = draw(st.sampled_from([1, 2] if "num_classes" in faults else [None, 3, 5]))
    batch_size = draw(st.integers(1, 3))
    for fault in sorted(faults):
        event(f"fault: {fault}")
    return data, labels, image_shape, num_classes, batch_size


def _expected(data, labels, image_shape, num_classes):
    """The (x, y) the loader must return, or None when it must raise DataError."""
    if data.ndim != 4 or data.shape[1] not in (1, 3) or data.dtype.kind not in "iuf":
        return None
    if data.shape[0] == 0 or len(labels) != len(data):
        return None
    if image_shape is not None and (data.shape[2], data.shape[3], data.shape[1]) != image_shape:
        return None
    if labels.dtype.kind not in "iuf":
        return None
    with np.errstate(invalid="ignore"):
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            return None
        if (labels < 0).any() or (num_classes is not None and (labels >= num_classes).any()):
            return None
        if not (np.isfinite(data).all() and (data >= 0).all() and (data <= 255).all()):
            return None
    return data.astype("float32").transpose(0, 2, 3, 1), labels.astype("int64")


@SETTINGS
@given(h5_files())
def test_loader_returns_the_data_or_a_data_error_for_any_dtype(case):
    data, labels, image_shape, num_classes, batch_size = case
    kwargs = {"image_shape": image_shape, "num_classes": num_classes}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "drawn.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=labels)
        want = _expected(data, labels, image_shape, num_classes)
        if want is None:
            event("DataError")
            for read in (lambda: load_lab_h5(path, **kwargs),
                         lambda: list(iter_lab_h5(path, batch_size, **kwargs))):
                with pytest.raises(DataError) as err:
                    read()
                assert "drawn.h5" in str(err.value) and "expected" in str(err.value)
            return
        event(f"loads ({data.dtype})")
        x, y = load_lab_h5(path, **kwargs)
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x, want[0])
        np.testing.assert_array_equal(y, want[1])
        batches = list(iter_lab_h5(path, batch_size, **kwargs))
        assert all(len(bx) <= batch_size for bx, _ in batches)
        np.testing.assert_array_equal(np.concatenate([bx for bx, _ in batches]), want[0])
        np.testing.assert_array_equal(np.concatenate([by for _, by in batches]), want[1])
