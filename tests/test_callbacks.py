import keras
import numpy as np
import pytest

from keras_prune_guard import PruningCallback, insert_channel_mask, prune
from keras_prune_guard.model.surgery import find_channel_mask


@pytest.fixture()
def compiled(gen_model):
    model = insert_channel_mask(gen_model)
    model.compile(
        keras.optimizers.SGD(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def mask_output(model, x):
    mask = find_channel_mask(model)
    return keras.Model(model.inputs, mask.output).predict(x, verbose=0)


def test_fit_prunes_then_fine_tunes_with_the_mask_frozen(compiled, gen_clean):
    x, y = gen_clean
    pruning = PruningCallback((x, y), thresholds=[2, 4, 10], verbose=0)
    before = compiled.get_layer("fc_1").get_weights()[0].copy()
    compiled.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[pruning])
    chosen = pruning.result.snapshots[10.0].pruned_channels
    assert find_channel_mask(compiled).pruned_channels() == sorted(chosen)
    assert not np.array_equal(before, compiled.get_layer("fc_1").get_weights()[0])
    out = mask_output(compiled, x)
    assert np.all(out[..., chosen] == 0)
    assert out.max() > 0
    # Snapshots are pruned-only copies: untouched by the training that followed.
    snap = pruning.snapshots[4.0]
    np.testing.assert_array_equal(snap.get_layer("fc_1").get_weights()[0], before)
    assert find_channel_mask(snap).pruned_channels() == sorted(
        pruning.result.snapshots[4.0].pruned_channels
    )


def test_fit_with_other_callbacks_and_own_optimizer(compiled, gen_clean, tmp_path):
    x, y = gen_clean
    pruning = PruningCallback((x, y), thresholds=[4], fine_tune_at=4, verbose=0,
                              filepath=str(tmp_path / "bprime_{threshold:g}_{channels}.keras"))
    history = compiled.fit(
        x, y, validation_data=(x, y), epochs=5, batch_size=60, verbose=0,
        callbacks=[
            pruning,
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=1e9),
            keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras")),
        ],
    )
    assert len(history.history["loss"]) == 2  # EarlyStopping acted
    k = pruning.result.snapshots[4.0].num_pruned
    assert (tmp_path / f"bprime_4_{k}.keras").exists()
    reloaded = keras.saving.load_model(tmp_path / "ckpt.keras")
    assert find_channel_mask(reloaded).pruned_channels() == find_channel_mask(
        compiled).pruned_channels()


def test_one_instance_serves_two_fits(compiled, gen_clean):
    x, y = gen_clean
    pruning = PruningCallback((x, y), thresholds=[2], verbose=0)
    compiled.fit(x, y, epochs=1, verbose=0, callbacks=[pruning])
    first = pruning.result
    compiled.fit(x, y, epochs=1, verbose=0, callbacks=[pruning])
    assert pruning.result is not first
    assert list(pruning.snapshots) == [2.0]


def test_callback_needs_a_masked_model(gen_model, gen_clean):
    x, y = gen_clean
    gen_model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="exactly one ChannelMask"):
        gen_model.fit(x, y, epochs=1, verbose=0, callbacks=[PruningCallback((x, y), verbose=0)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"thresholds": [0]}, "> 0 and < 100"),
        ({"order": "up"}, "order must be one of"),
        ({"keep": "best"}, "keep must be one of"),
        ({"fine_tune_at": 3}, "fine_tune_at must be one of the thresholds"),
    ],
)
def test_arguments_are_checked(kwargs, message):
    x, y = np.zeros((2, 55, 47, 3), "float32"), np.zeros(2, "int64")
    with pytest.raises(ValueError, match=message):
        PruningCallback((x, y), **kwargs)


def test_prune_leaves_b_unchanged_and_returns_snapshots(gen_model, gen_clean):
    x, y = gen_clean
    result = prune(gen_model, (x, y), thresholds=[2, 10])
    assert set(result.snapshots) == {2.0, 10.0}
    assert not any(type(layer).__name__ == "ChannelMask" for layer in gen_model.layers)
    acc = np.mean(result.snapshots[10.0].predict(x, verbose=0).argmax(-1) == y) * 100
    assert acc == pytest.approx(result.sweep.snapshots[10.0].valid_accuracy)
