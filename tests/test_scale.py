"""Large validation sets: streamed input and the activation cache in a memory-mapped file."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_prune_guard import insert_channel_mask, prune
from keras_prune_guard.data.files import lab_h5_dataset
from keras_prune_guard.deploy.evaluate import evaluate
from keras_prune_guard.model.surgery import split_at_mask
from keras_prune_guard.pruning.activations import ActivationCache, MappedArray, collect
from keras_prune_guard.pruning.sweep import sweep

SHAPE = (55, 47, 3)


@pytest.fixture()
def masked(gen_model):
    return insert_channel_mask(gen_model)


@pytest.fixture(scope="module")
def in_memory(gen_dir, gen_clean, gen_sunglasses):
    """The reference: the whole sweep from arrays in memory, activations in RAM."""
    from keras_prune_guard.model.loading import deepid

    model = deepid(num_classes=10)
    model.load_weights(str(gen_dir / "bd_weights.weights.h5"))
    return sweep(insert_channel_mask(model), gen_clean, poisoned=gen_sunglasses,
                 full_curve=True, record_predictions=True, batch_size=50)


def test_streamed_file_with_a_file_cache_gives_the_in_memory_sweep(
    masked, gen_dir, gen_sunglasses, in_memory, tmp_path
):
    cache = tmp_path / "cache"
    seen = []

    def progress(step, total, acc):  # the cache file exists while the sweep runs
        seen.append(sorted(p.name for p in cache.iterdir()))

    valid = lab_h5_dataset(gen_dir / "clean_faces.h5", 37, image_shape=SHAPE, num_classes=10)
    result = sweep(masked, valid, poisoned=gen_sunglasses, full_curve=True,
                   record_predictions=True, batch_size=50, cache_dir=cache, progress=progress)
    np.testing.assert_array_equal(result.predictions, in_memory.predictions)
    assert result.channel_order == in_memory.channel_order
    assert result.curve == in_memory.curve
    assert {t: vars(s) for t, s in result.snapshots.items()} == {
        t: vars(s) for t, s in in_memory.snapshots.items()
    }
    np.testing.assert_allclose(result.channel_means, in_memory.channel_means, rtol=1e-12)
    assert result.stats["activation_cache"] == "file"
    assert in_memory.stats["activation_cache"] == "memory"
    assert result.stats["activation_bytes_per_image"] == 5 * 4 * 60 * 4 == 4800
    assert result.stats["images"] == 90
    # Two files (clean and poisoned activations) during the sweep, none after; one step
    # per pool_3 channel, dead ones included.
    assert len(seen) == 60 and all(len(names) == 2 for names in seen)
    assert all(name.startswith("kpg-activations-") for name in seen[0])
    assert list(cache.iterdir()) == []


def test_the_cache_file_is_removed_when_the_sweep_fails(masked, gen_clean, tmp_path):
    def stop(step, total, acc):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(masked, gen_clean, cache_dir=tmp_path, progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_unlabelled_streamed_data_is_refused_and_leaves_no_file(masked, gen_clean, tmp_path):
    images_only = tf.data.Dataset.from_tensor_slices(gen_clean[0]).batch(50)
    with pytest.raises(ValueError, match="no labels"):
        sweep(masked, images_only, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_collect_streams_a_generator_into_a_file(masked, gen_clean, tmp_path):
    x, y = gen_clean
    head, _ = split_at_mask(masked)

    def generate():  # an iterable of batches: never all images at once
        for start in range(0, len(x), 16):
            yield x[start : start + 16], y[start : start + 16]

    with collect(head, generate(), cache_dir=tmp_path) as streamed, \
            collect(head, (x, y), batch_size=16) as reference:
        assert isinstance(streamed.values, MappedArray) and streamed.cache.path.exists()
        assert isinstance(reference.values, np.ndarray)
        np.testing.assert_array_equal(streamed.values[:], reference.values)
        np.testing.assert_array_equal(streamed.values[np.array([5, 1, 89])],
                                      reference.values[[5, 1, 89]])
        np.testing.assert_array_equal(streamed.labels, y)
        np.testing.assert_array_equal(streamed.touched, reference.touched)
        np.testing.assert_array_equal(streamed.means, reference.means)
        assert streamed.values.nbytes == 90 * 4800
    assert list(tmp_path.iterdir()) == []


def test_activation_cache_in_ram_and_in_a_file(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 2, 3)).astype("float32") for n in (4, 1, 7)]
    whole = np.concatenate(parts)
    for kwargs in ({}, {"count": 12}, {"cache_dir": tmp_path / "new" / "dir"}):
        with ActivationCache(**kwargs) as cache:
            for part in parts:
                cache.append(part)
            rows = cache.finish()
            assert rows.shape == (12, 2, 3) and len(rows) == 12
            np.testing.assert_array_equal(rows[:], whole)
            np.testing.assert_array_equal(rows[3:6], whole[3:6])
    assert list((tmp_path / "new" / "dir").iterdir()) == []
    with pytest.raises(ValueError, match="More activation rows than announced"):
        ActivationCache(count=3).append(parts[0])
    with pytest.raises(ValueError, match="differ in shape"):
        cache = ActivationCache()
        cache.append(parts[0])
        cache.append(np.zeros((1, 3, 2), "float32"))
    with pytest.raises(ValueError, match="empty"):
        ActivationCache().finish()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cache_dir .*file.* is a file; expected a folder"):
        ActivationCache(tmp_path / "file")


def test_prune_and_evaluate_take_streamed_files(gen_model, gen_dir, in_memory, tmp_path):
    clean_file = gen_dir / "clean_faces.h5"
    result = prune(gen_model, lab_h5_dataset(clean_file, 64), thresholds=[4],
                   cache_dir=tmp_path)
    assert result.sweep.snapshots[4.0].pruned_channels == \
        in_memory.snapshots[4.0].pruned_channels
    b_prime = result.snapshots[4.0]
    streamed = evaluate(b_prime, lab_h5_dataset(clean_file, 64),
                        lab_h5_dataset(gen_dir / "sunglasses_faces.h5", 64))
    assert streamed.test_accuracy == pytest.approx(in_memory.snapshots[4.0].valid_accuracy)
    assert streamed.attack_success == pytest.approx(in_memory.snapshots[4.0].attack_success)


@pytest.mark.slow
def test_cli_repair_streams_with_a_file_cache_and_a_strategy(gen_dir, in_memory, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out, cache = tmp_path / "out", tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "keras_prune_guard.cli", "repair",
         "--weights", str(gen_dir / "bd_weights.weights.h5"),
         "--valid", str(gen_dir / "clean_faces.h5"),
         "--test", str(gen_dir / "clean_faces.h5"),
         "--poisoned", str(gen_dir / "sunglasses_faces.h5"),
         "--stream", "--activation-cache", str(cache), "--strategy", "mirrored",
         "--thresholds", "4", "--fine-tune-epochs", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ranking the streamed validation images" in done.stdout
    summary = json.loads((out / "report" / "report.json").read_text())
    assert summary["channel_order"] == in_memory.channel_order
    row = summary["rows"][0]
    assert row["pruned_channels"] == in_memory.snapshots[4.0].pruned_channels
    accuracy = in_memory.snapshots[4.0].valid_accuracy
    assert row["repaired"]["test_accuracy"] == pytest.approx(accuracy)
    assert (out / "goodnet_X4" / "saved_model.pb").is_file()
    assert (out / "report" / "saliency.png").is_file()  # first images taken from the stream
    assert list(cache.iterdir()) == []


def test_cli_names_a_bad_image_found_while_streaming(gen_dir, tmp_path, capsys):
    import h5py

    from keras_prune_guard.cli import main

    data = np.full((5, 3, 55, 47), 100.0, dtype="float32")
    data[3, 0, 10, 10] = 512.0  # read only when its batch comes through tf.data
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["data"], f["label"] = data, np.zeros(5, "int64")
    code = main(["repair", "--weights", str(gen_dir / "bd_weights.weights.h5"), "--valid",
                 str(bad), "--stream", "--fine-tune-epochs", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}: field `data`: found pixel values 100.0..512.0 in image 3" in err
    assert "Traceback" not in err
