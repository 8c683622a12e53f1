"""Fine-pruning on a DeepID BadNet: `fine_tune`, and `repair(fine_tune=...)`."""

import json

import keras
import numpy as np
import pytest

from keras_prune_guard import (
    FineTuneConfig,
    GoodNetModel,
    PruneConfig,
    RunOptions,
    deepid,
    insert_channel_mask,
    prune,
    repair,
)
from keras_prune_guard.defend.finetune import DEFAULT_LEARNING_RATE, fine_tune
from keras_prune_guard.deploy.evaluate import ServedModel, evaluate
from keras_prune_guard.model.surgery import find_channel_mask
from keras_prune_guard.report import csv_rows, fine_pruning_table


def mask_output(model, x):
    """What the ChannelMask layer outputs on `x` (the masked pool_3 activations)."""
    mask = find_channel_mask(model)
    return keras.Model(model.inputs, mask.output).predict(x, verbose=0)


def weights(model):
    return {w.path: np.array(w.numpy()) for w in model.weights}


@pytest.fixture()
def b_prime(gen_model, gen_clean):
    x, y = gen_clean
    return prune(gen_model, (x, y), thresholds=[4]).snapshots[4.0]


def test_fine_tune_keeps_pruned_channels_zero_and_leaves_b_prime_alone(b_prime, gen_clean):
    x, y = gen_clean
    pruned = find_channel_mask(b_prime).pruned_channels()
    assert 0 < len(pruned) < 60
    before = weights(b_prime)
    b_second = fine_tune(b_prime, (x, y), epochs=2, learning_rate=1e-3, batch_size=40)

    assert b_second is not b_prime and b_second.name == f"{b_prime.name}_ft"
    assert find_channel_mask(b_second).pruned_channels() == pruned
    out = mask_output(b_second, x)
    assert np.all(out[..., pruned] == 0.0)  # exactly zero, on every image and position
    kept = [c for c in range(60) if c not in pruned]
    assert out[..., kept].max() > 0
    # Every trainable layer moved; the mask did not.
    for name in ("conv_1", "conv_3", "fc_1", "output"):
        assert not np.array_equal(b_second.get_layer(name).get_weights()[0],
                                  b_prime.get_layer(name).get_weights()[0]), name
    assert not find_channel_mask(b_second).trainable_weights
    assert len(b_second.history.history["loss"]) == 2
    # B' is untouched, weight for weight, and still masked the same way.
    after = weights(b_prime)
    assert after.keys() == before.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert np.all(mask_output(b_prime, x)[..., pruned] == 0.0)


@pytest.mark.slow
def test_fine_tune_is_seeded(b_prime, gen_clean):
    x, y = gen_clean
    runs = [fine_tune(b_prime, (x[:64], y[:64]), epochs=1, batch_size=16, seed=s,
                      learning_rate=DEFAULT_LEARNING_RATE)
            for s in (3, 3, 4)]
    first, again, other = (r.get_layer("fc_2").get_weights()[0] for r in runs)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_goodnet_of_b_and_b_second_holds_two_networks(gen_model, b_prime, gen_clean,
                                                     gen_sunglasses):
    x, y = gen_clean
    b_second = fine_tune(b_prime, (x, y), epochs=1, learning_rate=DEFAULT_LEARNING_RATE)
    pruned_goodnet = GoodNetModel(gen_model, b_prime)
    goodnet = GoodNetModel(gen_model, b_second)
    assert pruned_goodnet.shares_layers is True
    assert goodnet.shares_layers is False
    # Its B half is B, its B' half is B'' (own weights).
    xs = np.concatenate([x[:20], gen_sunglasses[0][:20]])
    np.testing.assert_allclose(goodnet.bad_network().predict(xs, verbose=0),
                               gen_model.predict(xs, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(goodnet.repaired_network().predict(xs, verbose=0),
                               b_second.predict(xs, verbose=0), rtol=1e-5, atol=1e-6)
    pred = goodnet.predict(xs, verbose=0).argmax(-1)
    b_pred = gen_model.predict(xs, verbose=0).argmax(-1)
    bb_pred = b_second.predict(xs, verbose=0).argmax(-1)
    np.testing.assert_array_equal(pred, np.where(b_pred == bb_pred, bb_pred, 10))


def test_fine_tune_rejects_bad_arguments(gen_model, b_prime, gen_clean):
    x, y = gen_clean
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fine_tune(b_prime, (x, y), epochs=0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        fine_tune(b_prime, (x, y), epochs=1, learning_rate=0)
    with pytest.raises(ValueError, match=r"images of shape \(47, 55, 3\).*\(N, 55, 47, 3\)"):
        fine_tune(b_prime, (x.transpose(0, 2, 1, 3), y), epochs=1)
    with pytest.raises(ValueError, match="90 images, 89 labels"):
        fine_tune(b_prime, (x, y[:-1]), epochs=1)
    with pytest.raises(ValueError, match=r"class labels in \[0, 10\)"):
        fine_tune(b_prime, (x, y + 2000), epochs=1)
    with pytest.raises(ValueError, match=r"integer class labels"):
        fine_tune(b_prime, (x, y + 0.5), epochs=1)
    with pytest.raises(ValueError, match="exactly one ChannelMask"):
        fine_tune(gen_model, (x, y), epochs=1)


def test_default_fine_pruning_chooses_its_schedule_and_matches_the_cli():
    from keras_prune_guard.cli.parser import build_parser

    args = build_parser().parse_args(["demo"])
    assert FineTuneConfig().learning_rate is None is args.fine_tune_learning_rate
    assert FineTuneConfig().epochs == args.fine_tune_epochs > 0  # fine-pruning by default
    assert tuple(args.fine_tune_schedules) == FineTuneConfig().schedules
    assert DEFAULT_LEARNING_RATE == 1e-4  # 0.1's fixed rate, still the --fine-tune-lr hint


def test_default_repair_keeps_b_prime_when_clean_data_are_too_few(gen_model, gen_clean,
                                                                  gen_sunglasses, tmp_path):
    # 25 clean faces for 10 classes: fewer than the 3 per class choosing needs, as the lab's
    # 120 faces for 1283 identities are
    few = gen_clean[0][:25], gen_clean[1][:25]
    result = repair(gen_model, few, tmp_path, PruneConfig(thresholds=[4]),
                    test=gen_clean, poisoned=gen_sunglasses, run=RunOptions(verbose=0))
    tuned = result.rows[0].fine_tuned
    assert tuned.choice.kept_b_prime and tuned.files == {} and tuned.repaired is None
    assert "25 clean images for 10 classes (2.50 per class" in tuned.choice.reason
    assert not list(tmp_path.glob("*_ft_*"))
    md = (tmp_path / "report" / "report.md").read_text()
    assert "B''_4 (kept B')" in md and "X = 4: kept B': 25 clean images" in md
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["rows"][0]["fine_tuned"]["choice"]["schedule"] is None


@pytest.fixture(scope="module")
def fine_pruned(gen_dir, gen_clean, gen_sunglasses, gen_trigger_region, tmp_path_factory):
    """repair() with one epoch of fine-tuning per threshold, on the generated BadNet."""
    from keras_prune_guard.model.loading import deepid

    model = deepid(num_classes=10)
    model.load_weights(str(gen_dir / "bd_weights.weights.h5"))
    out = tmp_path_factory.mktemp("fine_pruned")
    lines = []

    class Recorded(RunOptions):  # keeps the progress lines instead of printing them
        def log(self, message):
            lines.append(message)

    summary = repair(model, gen_clean, out, PruneConfig(thresholds=[2, 10]), test=gen_clean,
                     poisoned=gen_sunglasses,
                     fine_tune=FineTuneConfig(epochs=1, learning_rate=DEFAULT_LEARNING_RATE),
                     trigger_region=gen_trigger_region, run=Recorded())
    return model, out, summary, lines


def test_repair_with_fine_tuning_writes_files_and_rows(fine_pruned, gen_clean,
                                                       gen_sunglasses):
    model, out, summary, lines = fine_pruned
    x, y = gen_clean
    assert summary.fine_tune == FineTuneConfig(epochs=1, learning_rate=DEFAULT_LEARNING_RATE,
                                               batch_size=32)
    assert (summary.fine_tune_data, summary.fine_tune_images) == ("the validation data", 90)
    for row in summary.rows:
        tag = f"X{row.threshold:g}"
        tuned = row.fine_tuned
        assert len(tuned.train_loss) == 1
        assert set(tuned.files) == {"repaired_keras", "repaired_h5", "goodnet_savedmodel",
                                       "goodnet_keras"}
        assert tuned.files["repaired_keras"] == str(out / f"bprime_ft_{tag}.keras")
        # The pruned-only files are still there, next to the fine-tuned ones.
        assert (out / f"bprime_{tag}.keras").is_file()
        b_second = keras.saving.load_model(out / f"bprime_ft_{tag}.keras")
        b_prime = keras.saving.load_model(out / f"bprime_{tag}.keras")
        pruned = find_channel_mask(b_second).pruned_channels()
        assert pruned == sorted(row.pruned_channels)
        assert pruned == find_channel_mask(b_prime).pruned_channels()
        assert not np.array_equal(b_second.get_layer("fc_1").get_weights()[0],
                                  b_prime.get_layer("fc_1").get_weights()[0])
        assert np.all(mask_output(b_second, x)[..., pruned] == 0.0)
        # The scores in the row are those of the saved files.
        assert tuned.repaired == evaluate(b_second, gen_clean, gen_sunglasses)
        assert tuned.valid_accuracy == tuned.repaired.test_accuracy
        plain = keras.saving.load_model(out / f"bprime_ft_{tag}.h5", custom_objects={})
        np.testing.assert_array_equal(plain.predict(x, verbose=0).argmax(-1),
                                      b_second.predict(x, verbose=0).argmax(-1))
        goodnet = keras.saving.load_model(out / f"goodnet_ft_{tag}.keras")
        assert goodnet.shares_layers is False
        scores = evaluate(goodnet, gen_clean, gen_sunglasses, flag_class=10)
        assert scores == tuned.goodnet
        served = ServedModel(out / f"goodnet_ft_{tag}")
        served_scores = evaluate(served, gen_clean, gen_sunglasses)
        assert (served_scores.test_accuracy, served_scores.attack_success) == (
            scores.test_accuracy, scores.attack_success)
    assert not list(out.rglob(".tmp-*"))
    assert any("fine-tuned B' (1 epochs) on 90 images" in line for line in lines)


def test_repair_report_has_the_fine_tuned_rows(fine_pruned):
    _, out, summary, _ = fine_pruned
    saved = json.loads((out / "report" / "report.json").read_text())
    tuned = summary.rows[1].fine_tuned
    assert saved["rows"][1]["fine_tuned"]["repaired"] == tuned.repaired.to_dict()
    models = [r["model"] for r in csv_rows(saved)]
    assert models == ["B", "B'_2", "G_2", "B''_2", "G''_2", "B'_10", "G_10", "B''_10",
                      "G''_10"]
    md = (out / "report" / "report.md").read_text()
    assert "| B''_10 |" in md and "| G''_2 |" in md
    assert "## Pruning only vs fine-pruning" in md and fine_pruning_table(saved) in md
    assert "fine-tuned for 1 epochs on the validation data" in md
    page = (out / "report" / "report.html").read_text()
    assert "<td>B&#x27;&#x27;_10</td>" in page
    # Saliency figure covers B'' too.
    assert "B'' X=10" in saved["saliency_trigger_share"]


def test_repair_without_fine_tuning_is_unchanged(gen_model, gen_clean, tmp_path):
    with pytest.warns(DeprecationWarning, match=r"repair\(log=\.\.\.\)"):  # the 0.1 call
        summary = repair(gen_model, gen_clean, tmp_path, thresholds=[4], log=lambda _: None,
                         fine_tune=FineTuneConfig(epochs=0))
    assert summary.fine_tune is None and summary.rows[0].fine_tuned is None
    assert not list(tmp_path.glob("*_ft_*"))
    assert "B''" not in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(ValueError, match="fine_tune_data was given but fine_tune_epochs=0"):
        repair(gen_model, gen_clean, tmp_path, fine_tune=FineTuneConfig(epochs=0),
               fine_tune_data=gen_clean)
    with pytest.raises(ValueError, match="fine_tune_epochs must be an integer >= 0"):
        repair(gen_model, gen_clean, tmp_path, fine_tune_epochs=-1)
    x, y = gen_clean
    with pytest.raises(ValueError, match=r"my_data: images of shape \(55, 46, 3\)"):
        repair(gen_model, gen_clean, tmp_path, fine_tune_epochs=1,
               fine_tune_data=(x[:, :, :46], y), fine_tune_label="my_data")


def test_whole_number_float_labels_fine_tune_as_they_sweep():
    """One validator (data/checks.py): fine-tuning takes the labels the sweep takes."""
    rng = np.random.default_rng(0)
    b_prime = insert_channel_mask(deepid(num_classes=4), pruned_channels=[0, 1])
    x = rng.uniform(0, 255, (8, 55, 47, 3)).astype("float32")
    y = np.arange(8) % 4
    b_second = fine_tune(b_prime, (x, y.astype("float32")), epochs=1, learning_rate=1e-3)
    assert find_channel_mask(b_second).pruned_channels() == [0, 1]
    with pytest.raises(ValueError, match=r"integer class labels"):
        fine_tune(b_prime, (x, y + 0.25), epochs=1)
