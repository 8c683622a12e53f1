import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_prune_guard import GoodNetModel, prune
from keras_prune_guard.model.surgery import find_channel_mask, pruned_copy


@pytest.fixture()
def pair(gen_model, gen_clean):
    x, y = gen_clean
    return gen_model, prune(gen_model, (x, y), thresholds=[10]).snapshots[10.0]


def images(gen_clean, gen_sunglasses):
    return np.concatenate([gen_clean[0], gen_sunglasses[0]])


def expected_classes(bad, repaired, x):
    b = bad.predict(x, verbose=0).argmax(-1)
    p = repaired.predict(x, verbose=0).argmax(-1)
    return np.where(b == p, p, bad.output_shape[-1])


def test_n_plus_one_rule(pair, gen_clean, gen_sunglasses):
    bad, repaired = pair
    x = images(gen_clean, gen_sunglasses)
    goodnet = GoodNetModel(bad, repaired)
    out = goodnet.predict(x, verbose=0)
    assert out.shape == (len(x), 11)
    classes = out.argmax(-1)
    np.testing.assert_array_equal(classes, expected_classes(bad, repaired, x))
    agree = classes < 10
    np.testing.assert_allclose(out[agree, :10], repaired.predict(x[agree], verbose=0), atol=1e-6)
    assert np.all(out[agree, 10] == 0)
    assert np.all(out[~agree] == np.eye(11)[10])
    assert agree.any() and (~agree).any()


def test_pruned_only_goodnet_holds_b_once(pair):
    bad, repaired = pair
    goodnet = GoodNetModel(bad, repaired)
    assert goodnet.shares_layers
    assert goodnet.count_params() == bad.count_params() + 60  # plus the mask vector


def test_fine_tuned_goodnet_holds_both(pair, gen_clean):
    bad, repaired = pair
    tuned = pruned_copy(repaired, find_channel_mask(repaired).pruned_channels())
    tuned.get_layer("output").bias.assign(tuned.get_layer("output").bias * 0.5)
    goodnet = GoodNetModel(bad, tuned)
    assert not goodnet.shares_layers
    assert goodnet.count_params() == bad.count_params() + tuned.count_params()
    x = gen_clean[0]
    np.testing.assert_array_equal(
        goodnet.predict(x, verbose=0).argmax(-1), expected_classes(bad, tuned, x)
    )


@pytest.mark.parametrize("fine_tuned", [False, True])
def test_keras_round_trip(pair, gen_clean, tmp_path, fine_tuned):
    bad, repaired = pair
    if fine_tuned:
        repaired = pruned_copy(repaired, find_channel_mask(repaired).pruned_channels())
        repaired.get_layer("fc_2").bias.assign(repaired.get_layer("fc_2").bias + 0.1)
    goodnet = GoodNetModel(bad, repaired)
    goodnet.save(tmp_path / "g.keras")
    again = keras.saving.load_model(tmp_path / "g.keras")
    assert isinstance(again, GoodNetModel) and again.shares_layers == (not fine_tuned)
    x = gen_clean[0]
    np.testing.assert_array_equal(again.predict(x, verbose=0), goodnet.predict(x, verbose=0))
    names = [layer.name for layer in goodnet.networks.layers]
    assert [layer.name for layer in again.networks.layers] == names
    if not fine_tuned:
        assert find_channel_mask(again.networks).pruned_channels() == find_channel_mask(
            repaired).pruned_channels()


def test_mismatched_networks_are_refused(gen_model):
    from keras_prune_guard import deepid

    with pytest.raises(ValueError, match="same output shape"):
        GoodNetModel(gen_model, deepid(num_classes=7))
    with pytest.raises(ValueError, match="needs bad_model and repaired_model"):
        GoodNetModel(gen_model)


@pytest.mark.slow
def test_export_reloads_in_a_fresh_process(pair, gen_clean, gen_sunglasses, tmp_path):
    bad, repaired = pair
    x = images(gen_clean, gen_sunglasses)
    goodnet = GoodNetModel(bad, repaired)
    goodnet.export(tmp_path / "goodnet", verbose=False)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import json, numpy as np, tensorflow as tf
served = tf.saved_model.load({str(tmp_path / "goodnet")!r})
x = np.load({str(tmp_path / "x.npy")!r})
out = served.serve(tf.constant(x)).numpy()
np.save({str(tmp_path / "out.npy")!r}, out)
try:
    served.serve(tf.zeros((1, 47, 55, 3)))
    wrong = "accepted"
except Exception as err:
    wrong = type(err).__name__
print(json.dumps({{"wrong_shape": wrong}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(out, goodnet.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_array_equal(out.argmax(-1), expected_classes(bad, repaired, x))
    assert json.loads(done.stdout.strip().splitlines()[-1])["wrong_shape"] != "accepted"
    # Nothing half-written beside the SavedModel.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["goodnet", "out.npy", "x.npy"]


def test_first_argmax_is_keras_argmax():
    """The export-friendly argmax ranks like `ops.argmax`: first index on ties, -0.0 < +0.0."""
    from keras import ops

    from keras_prune_guard.detect.goodnet import first_argmax

    rng = np.random.default_rng(0)
    tiny = np.finfo("float32").tiny
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.5, tiny, -tiny, 3e-39, -3e-39], "float32")
    for width in (1, 2, 3, 8, 1283):
        x = rng.choice(values, size=(400, width)).astype("float32")
        np.testing.assert_array_equal(np.asarray(first_argmax(x)), np.asarray(ops.argmax(x, -1)))
    x = np.array([[0.2, 0.5, 0.5], [-0.0, 0.0, -1.0], [-0.0, -0.0, -1.0], [7, 7, 7]], "float32")
    np.testing.assert_array_equal(np.asarray(first_argmax(x)), [1, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(first_argmax(x.astype("float16"))), [1, 1, 0, 0])
