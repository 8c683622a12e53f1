"""The 0.2 API: one configuration, checked once; one vocabulary; 0.1 names still work."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

from keras_prune_guard import (
    FineTuneConfig,
    PruneConfig,
    PruningCallback,
    RepairResult,
    RunOptions,
    evaluate,
    insert_channel_mask,
    prune,
    repair,
    sweep,
)
from keras_prune_guard.cli import main
from keras_prune_guard.cli.parser import build_parser, config_from_args


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"thresholds": "24"}, r"list of numbers.*not a string.*'24'"),
        ({"thresholds": "2 4 10"}, r"not a string.*'2 4 10'"),
        ({"thresholds": [True]}, r"must be numbers.*True"),
        ({"thresholds": [2, "4"]}, r"must be numbers.*'4'"),
        ({"thresholds": [0]}, "> 0 and < 100"),
        ({"thresholds": [2, 2.0]}, "must not repeat"),
        ({"thresholds": []}, "at least one"),
        ({"order": "desc"}, r"order must be one of \('ascending', 'descending'\)"),
        ({"keep": "best"}, "keep must be one of"),
        ({"relative": "yes"}, "relative must be True or False"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": True}, "batch_size must be an integer >= 1"),
        ({"full_curve": 1}, "full_curve must be True or False"),
        ({"after": ""}, "after must be a layer name"),
        ({"tie_tolerance": -1.0}, "tie_tolerance must be a finite number >= 0"),
    ],
)
def test_prune_config_checks_every_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**kwargs)


def test_prune_config_is_frozen_sorted_and_round_trips():
    config = PruneConfig(thresholds=[10, 2, 4], keep="last_within", after="pool_3")
    assert config.thresholds == (2.0, 4.0, 10.0)
    assert PruneConfig.from_config(config.get_config()) == config
    assert json.loads(json.dumps(config.get_config()))["thresholds"] == [2.0, 4.0, 10.0]
    assert config.replace(order="descending").order == "descending"
    with pytest.raises(AttributeError):
        config.order = "descending"
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        PruneConfig.from_config({"colour": "red"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": -1}, "epochs must be an integer >= 0"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"learning_rate": float("inf")}, "learning_rate must be > 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ],
)
def test_fine_tune_config_checks_every_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**kwargs)
    config = FineTuneConfig(epochs=3, learning_rate=1e-2)
    assert FineTuneConfig.from_config(config.get_config()) == config


def test_run_options_are_checked():
    with pytest.raises(ValueError, match="strategy must be a tf.distribute.Strategy"):
        RunOptions(strategy="mirrored")
    with pytest.raises(ValueError, match="verbose must be an integer >= 0"):
        RunOptions(verbose=-1)


class _Untouchable:
    """Validation data that fails the test if anything reads it."""

    def __iter__(self):
        raise AssertionError("the data was read before the arguments were checked")


def test_bad_options_fail_before_any_data_is_read():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="order must be one of"):
        prune(model, _Untouchable(), order="desc")
    with pytest.raises(ValueError, match="thresholds takes a list"):
        sweep(insert_channel_mask(model), _Untouchable(), thresholds="24")
    with pytest.raises(ValueError, match="keep must be one of"):
        PruningCallback(_Untouchable(), keep="best")
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['treshold'\]"):
        prune(model, _Untouchable(), treshold=[2])


def test_cli_options_come_from_the_configuration():
    args = build_parser().parse_args(
        ["repair", "--weights", "w.h5", "--valid", "v.h5", "--thresholds", "4", "2",
         "--keep", "last_within", "--tie-tolerance", "0", "--batch-size", "64",
         "--fine-tune-epochs", "2", "--fine-tune-lr", "0.01"])
    assert config_from_args(PruneConfig, args) == PruneConfig(
        thresholds=[2, 4], keep="last_within", tie_tolerance=0.0, batch_size=64)
    assert config_from_args(FineTuneConfig, args, "fine_tune_") == FineTuneConfig(
        epochs=2, learning_rate=0.01)
    defaults = build_parser().parse_args(["demo"])
    assert config_from_args(PruneConfig, defaults) == PruneConfig()


def test_cli_renamed_option_still_works_with_one_line_on_stderr(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--cache-dir", "somewhere", "--help"])
    assert stop.value.code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["keras-prune-guard: warning: --cache-dir is deprecated since 0.2; use "
                   "--benchmark-cache"]
    args = build_parser().parse_args(["demo", "--cache-dir", "somewhere"])
    assert args.benchmark_cache == "somewhere"


@pytest.mark.slow
def test_one_configuration_selects_the_same_b_prime_everywhere(gen_model, gen_clean,
                                                               tmp_path):
    """sweep, prune, PruningCallback and repair given one PruneConfig agree for every X."""
    config = PruneConfig(thresholds=[2, 4, 10], keep="first_below")
    quiet = RunOptions(verbose=0)
    masked = insert_channel_mask(gen_model)
    swept = sweep(masked, gen_clean, config, run=quiet)
    pruned = prune(gen_model, gen_clean, config, run=quiet)
    masked_for_fit = insert_channel_mask(gen_model)
    masked_for_fit.compile("adam", "sparse_categorical_crossentropy")
    callback = PruningCallback(gen_clean, config, run=quiet)
    masked_for_fit.fit(gen_clean[0][:8], gen_clean[1][:8], epochs=0, verbose=0,
                       callbacks=[callback])
    repaired = repair(gen_model, gen_clean, tmp_path, config, run=quiet,
                      fine_tune=FineTuneConfig(epochs=0))
    chosen = {t: s.pruned_channels for t, s in swept.snapshots.items()}
    assert set(chosen) == {2.0, 4.0, 10.0}
    assert {t: s.pruned_channels for t, s in pruned.sweep.snapshots.items()} == chosen
    assert {t: s.pruned_channels for t, s in callback.result.snapshots.items()} == chosen
    assert {r.threshold: r.pruned_channels for r in repaired.rows} == chosen
    assert repaired.config == config


def test_repair_result_is_what_report_json_holds(gen_model, gen_clean, gen_sunglasses,
                                                 tmp_path):
    result = repair(gen_model, gen_clean, tmp_path, PruneConfig(thresholds=[4]),
                    test=gen_clean, poisoned=gen_sunglasses, run=RunOptions(verbose=0),
                    fine_tune=FineTuneConfig(epochs=0))
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved == result.to_dict()
    assert set(saved["report_files"]) == {"md", "csv", "json", "png", "html", "detection_csv",
                                          "roc_png"}
    again = RepairResult.from_dict(saved)
    assert again.to_dict() == saved
    assert again.rows[0].goodnet == result.rows[0].goodnet
    assert result.rows[0].goodnet.detection_rate is not None
    x, y = gen_clean
    b_accuracy = np.mean(gen_model.predict(x, verbose=0).argmax(-1) == y) * 100
    assert result.baseline.test_accuracy == pytest.approx(b_accuracy)


def test_0_1_names_keep_working_with_deprecation_warnings(gen_model, gen_clean):
    x, y = gen_clean
    with pytest.warns(DeprecationWarning, match=r"prune\(model, valid=\(x_val, y_val\)\)"):
        old = prune(gen_model, x, y, thresholds=[4], verbose=0)
    new = prune(gen_model, (x, y), PruneConfig(thresholds=[4]), run=RunOptions(verbose=0))
    assert old.sweep.snapshots[4.0].pruned_channels == new.sweep.snapshots[4.0].pruned_channels
    snap, swept = new.sweep.snapshots[4.0], new.sweep
    with pytest.warns(DeprecationWarning, match=r"Snapshot.num_pruned"):
        assert snap.channels_pruned == snap.num_pruned
    with pytest.warns(DeprecationWarning, match=r"SweepResult.channel_order"):
        assert swept.order == swept.channel_order
    with pytest.warns(DeprecationWarning, match=r"SweepResult.config.order"):
        assert swept.ranking == "ascending"
    with pytest.warns(DeprecationWarning, match=r"\.valid_accuracy"):
        assert swept.curve[0]["valid_accuracy"] == swept.baseline_valid_accuracy
    with pytest.warns(DeprecationWarning, match=r"evaluate\(test=\.\.\.\)"):
        scores = evaluate(gen_model, clean=gen_clean)
    assert scores.test_accuracy == evaluate(gen_model, gen_clean).test_accuracy
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 0.2 spellings warn about nothing
        PruneConfig(thresholds=[4])
        assert new.sweep.snapshots[4.0].num_pruned == snap.num_pruned


def test_labels_are_checked_in_the_api_as_in_the_cli(gen_model, gen_clean):
    x, y = gen_clean
    with pytest.raises(ValueError, match=r"valid: found one-hot labels of shape \(90, 10\)"):
        prune(gen_model, (x, keras.utils.to_categorical(y, 10)))
    bad = y.astype("float64")
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"valid: found nan at index 3"):
        prune(gen_model, (x, bad))
    with pytest.raises(ValueError, match=r"valid: found 10 at index 0.*\[0, 10\)"):
        repair(gen_model, (x, np.full(len(y), 10)), "unused")


def test_the_callback_takes_a_stream_like_prune(gen_model, gen_dir, gen_clean):
    from keras_prune_guard.data.files import lab_h5_dataset

    config, quiet = PruneConfig(thresholds=[4]), RunOptions(verbose=0)
    stream = lab_h5_dataset(gen_dir / "clean_faces.h5", 50)
    masked = insert_channel_mask(gen_model)
    masked.compile("adam", "sparse_categorical_crossentropy")
    callback = PruningCallback(stream, config, run=quiet)
    masked.fit(gen_clean[0][:8], gen_clean[1][:8], epochs=0, verbose=0, callbacks=[callback])
    expected = prune(gen_model, gen_clean, config, run=quiet).sweep.snapshots[4.0]
    assert callback.result.snapshots[4.0] == expected
