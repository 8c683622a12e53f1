"""Deploying the GoodNet: SavedModel, ONNX and LiteRT exports that run and agree with Keras.

Real models only: the generated DeepID BadNet with its faces (conftest's `gen_dir`)
and the built-in benchmark's BadNet at the reduced size of test_demo.py. Models are
built once per module and shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

from keras_prune_guard import GoodNetModel, deepid, export_goodnet, fine_tune, prune
from keras_prune_guard.cli import main
from keras_prune_guard.data.files import load_lab_h5, load_true_labels
from keras_prune_guard.deploy.evaluate import ServedModel, evaluate, load_model_for_eval
from keras_prune_guard.deploy.export import ExportError
from keras_prune_guard.deploy.runtimes import LiteRTModel, MissingRuntimeError, OnnxModel
from keras_prune_guard.model.loading import load_network

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"savedmodel": "", "onnx": ".onnx", "litert": ".tflite"}
WRAPPERS = {"savedmodel": ServedModel, "onnx": OnnxModel, "litert": LiteRTModel}
ATOL = 1e-5


def export_all(goodnet: GoodNetModel, folder: Path, stem: str = "goodnet") -> dict[str, Path]:
    """The GoodNet in every format, each through export_goodnet (self-checked)."""
    return {fmt: export_goodnet(goodnet, folder / f"{stem}{suffix}", format=fmt)
            for fmt, suffix in FORMATS.items()}


def assert_agrees(runtime, x: np.ndarray, expected: np.ndarray) -> None:
    got = np.asarray(runtime(x))
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert np.max(np.abs(got - expected)) <= ATOL


def run_script(*args: str) -> subprocess.CompletedProcess:
    """Runs a script of this tree (not an installed copy) in a fresh Python."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


# --- the net network and its real faces --------------------------------------------------


@pytest.fixture(scope="module")
def net(gen_dir, gen_clean, gen_sunglasses, tmp_path_factory):
    """B, B' (10 points), the GoodNet, its 171 images, their Keras outputs, its exports."""
    bad = deepid(num_classes=10)
    bad.load_weights(str(gen_dir / "bd_weights.weights.h5"))
    b_prime = prune(bad, gen_clean, thresholds=[10], verbose=0).snapshots[10.0]
    goodnet = GoodNetModel(bad, b_prime)
    x = np.concatenate([gen_clean[0], gen_sunglasses[0]])
    folder = tmp_path_factory.mktemp("deploy")
    goodnet.save(folder / "goodnet_X10.keras")
    return {"bad": bad, "b_prime": b_prime, "goodnet": goodnet, "x": x,
            "expected": goodnet.predict(x, verbose=0), "folder": folder,
            "paths": export_all(goodnet, folder, "goodnet_X10")}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_face_gets_the_keras_class(net, fmt):
    runtime = WRAPPERS[fmt](net["paths"][fmt])
    assert runtime.input_shape == (None, 55, 47, 3)
    assert_agrees(runtime, net["x"], net["expected"])
    # The N+1 rule itself: B' where B and B' agree, class 10 where they differ.
    x = net["x"]
    bad = net["bad"].predict(x, verbose=0).argmax(-1)
    fixed = net["b_prime"].predict(x, verbose=0).argmax(-1)
    classes = np.asarray(runtime(x)).argmax(-1)
    np.testing.assert_array_equal(classes, np.where(bad == fixed, fixed, 10))
    assert (classes == 10).any() and (classes < 10).any()


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_batch_size_is_dynamic(net, fmt):
    runtime = WRAPPERS[fmt](net["paths"][fmt])
    x, expected = net["x"], net["expected"]
    assert_agrees(runtime, x[:1], expected[:1])
    big = np.concatenate([x, x[:11]])  # 256 images in one call
    assert_agrees(runtime, big, np.concatenate([expected, expected[:11]]))
    assert_agrees(runtime, x[:3], expected[:3])  # and back to a small batch


def test_litert_runs_long_inputs_in_slices(net):
    runtime = LiteRTModel(net["paths"]["litert"], batch_size=100)
    assert_agrees(runtime, net["x"], net["expected"])  # 171 = 100 + 71
    assert runtime(net["x"][:0]).shape == (0, 11)


def test_files_have_standard_ops_and_named_dynamic_io(net):
    model = onnx.load(str(net["paths"]["onnx"]))
    onnx.checker.check_model(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert not {"Bitcast", "BitwiseAnd"} & {node.op_type for node in model.graph.node}
    (inp,), (out,) = model.graph.input, model.graph.output

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert (inp.name, dims(inp)) == ("images", ["batch", 55, 47, 3])
    assert (out.name, dims(out)) == ("output_0", ["batch", 11])
    # LiteRT: the interpreter (no Flex delegate) loads it; batch -1 in the signature.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(net["paths"]["litert"]))
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    assert list(detail["shape_signature"]) == [-1, 55, 47, 3]
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["output_0"]}}


@pytest.mark.filterwarnings("ignore:In the future `np.object`:FutureWarning")  # Keras's tf2onnx
@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_keras_export_method_writes_files_that_run(net, tmp_path, fmt):
    # The issue's own reproduction: `goodnet.export("g.onnx", format="onnx")`.
    path = tmp_path / f"g{FORMATS[fmt]}"
    net["goodnet"].export(str(path), format=fmt, verbose=False)
    assert_agrees(WRAPPERS[fmt](path), net["x"], net["expected"])


# --- a GoodNet holding two networks (B and a fine-tuned B'') --------------------------------


@pytest.fixture(scope="module")
def fine_tuned(net, gen_clean):
    b_second = fine_tune(net["b_prime"], gen_clean, epochs=1, learning_rate=3e-4)
    goodnet = GoodNetModel(net["bad"], b_second)
    assert not goodnet.shares_layers
    return goodnet, goodnet.predict(net["x"], verbose=0)


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_two_network_goodnet_exports(net, fine_tuned, tmp_path, fmt):
    goodnet, expected = fine_tuned
    path = export_goodnet(goodnet, tmp_path / f"goodnet_ft{FORMATS[fmt]}", format=fmt,
                          images=net["x"][::20])
    assert_agrees(WRAPPERS[fmt](path), net["x"], expected)
    assert not np.allclose(expected, net["expected"], atol=1e-3)  # B'' is not B'


# --- the self-check ---------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_disagreeing_export_is_refused_and_the_old_file_kept(net, tmp_path):
    # Dynamic-range quantisation (int8 weights) moves the outputs by ~1e-4: over 1e-5.
    path = tmp_path / "goodnet.tflite"
    path.write_bytes(b"previous contents")
    with pytest.raises(ExportError, match=r"disagrees with the Keras GoodNet: outputs differ "
                       r"by up to .*atol=1e-05"):
        export_goodnet(net["goodnet"], path, format="litert",
                       converter_options={"optimizations": [tf.lite.Optimize.DEFAULT]})
    assert path.read_bytes() == b"previous contents"
    assert leftovers(tmp_path) == ["goodnet.tflite"]


class LogGammaSoftmax(keras.layers.Layer):
    """softmax(lgamma(x + 1)): `Lgamma` has no ONNX op, and LiteRT mis-converts it."""

    def call(self, x):
        return tf.math.softmax(tf.math.lgamma(x + 1.0))


class CumprodSoftmax(keras.layers.Layer):
    """softmax(cumprod(x)): `Cumprod` is no TFLite built-in (only a Flex op)."""

    def call(self, x):
        return tf.math.softmax(tf.math.cumprod(x, axis=-1))


def tiny_goodnet(head: keras.layers.Layer) -> GoodNetModel:
    def network(last):
        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, last(keras.layers.Dense(5)(keras.layers.Flatten()(inputs))))

    return GoodNetModel(network(head), network(keras.layers.Softmax()))


WITH_FLEX = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]}}


@pytest.mark.parametrize("head, fmt, options, expected", [
    (LogGammaSoftmax, "onnx", None, "self-check in ONNX Runtime: ONNX Runtime cannot load it: "
     ".*No Op registered for Lgamma"),
    # The converter writes this file without a word; only running it shows it is broken.
    (LogGammaSoftmax, "litert", None, "self-check in the LiteRT interpreter: the LiteRT "
     "interpreter cannot run it on a batch of 8"),
    (CumprodSoftmax, "litert", None, "Could not convert .*'tf.Cumprod' op is neither a custom "
     "op nor a flex op"),
    # The symptom: a file that needs the Flex delegate is refused, not written.
    (CumprodSoftmax, "litert", WITH_FLEX, "self-check in the LiteRT interpreter: .*Select "
     "TensorFlow op.*Flex delegate"),
])
def test_an_export_that_does_not_run_is_refused(tmp_path, head, fmt, options, expected):
    path = tmp_path / f"g{FORMATS[fmt]}"
    with pytest.raises(ExportError, match=expected) as info:
        export_goodnet(tiny_goodnet(head()), path, format=fmt, converter_options=options)
    message = str(info.value)
    assert message.startswith(str(path) + ":") or message.startswith("Could not convert")
    assert message.endswith(f"Nothing was written to {path}.") and "\n" not in message
    assert ".tmp-" not in message  # names the final path, not the temporary one
    assert leftovers(tmp_path) == []


def test_bad_arguments_are_refused_before_writing(net, tmp_path):
    goodnet = net["goodnet"]
    with pytest.raises(ValueError, match=r"must end in \.onnx\. Received: path="):
        export_goodnet(goodnet, tmp_path / "g.tflite", format="onnx")
    with pytest.raises(ValueError, match=r"format must be one of .*Received: format='tflite'"):
        export_goodnet(goodnet, tmp_path / "g.tflite", format="tflite")
    with pytest.raises(ValueError, match=r"ends in \.onnx, the suffix of format='onnx'"):
        export_goodnet(goodnet, tmp_path / "g.onnx")
    with pytest.raises(ValueError, match=r"exports a GoodNetModel. Received: .*Functional"):
        export_goodnet(net["bad"], tmp_path / "b.onnx", format="onnx")
    with pytest.raises(ValueError, match=r"export_goodnet images: images of shape \(47, 55, 3\)"):
        export_goodnet(goodnet, tmp_path / "g.onnx", format="onnx",
                       images=np.zeros((2, 47, 55, 3), "float32"))
    assert leftovers(tmp_path) == []


def test_missing_runtime_names_the_extra(net, monkeypatch, capsys, gen_dir):
    # `None` in sys.modules makes `import onnxruntime` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingRuntimeError, match=r'pip install "keras-prune-guard\[onnx\]"'):
        OnnxModel(net["paths"]["onnx"])
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r'pip install "keras-prune-guard\[litert\]"'):
        load_model_for_eval(net["paths"]["litert"])
    code = main(["eval", str(gen_dir / "clean_faces.h5"),
                 str(gen_dir / "sunglasses_faces.h5"), str(net["paths"]["onnx"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("keras-prune-guard eval: error: ") and "[onnx]" in err


# --- scoring the files as the lab's eval.py does ----------------------------------------------


def eval_lines(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


def test_eval_prints_the_same_figures_for_every_format(net, gen_dir, capsys):
    clean, poisoned = gen_dir / "clean_faces.h5", gen_dir / "sunglasses_faces.h5"
    printed = {}
    for fmt, path in net["paths"].items():
        assert main(["eval", str(clean), str(poisoned), str(path)]) == 0
        printed[fmt] = eval_lines(capsys.readouterr().out)
    assert printed["onnx"] == printed["savedmodel"] == printed["litert"]
    scores = evaluate(net["goodnet"], load_lab_h5(clean), load_lab_h5(poisoned))
    assert float(printed["onnx"]["Clean Classification accuracy"]) == pytest.approx(
        scores.test_accuracy, abs=1e-4)
    assert float(printed["onnx"]["Attack Success Rate"]) == pytest.approx(
        scores.attack_success, abs=1e-4)
    flagged = evaluate(net["goodnet"], load_lab_h5(clean), load_lab_h5(poisoned),
                       flag_class=10)
    lines = printed["litert"]
    assert float(lines["False Alarm Rate (clean images flagged as class 10)"]) == \
        pytest.approx(flagged.false_alarm_rate, abs=1e-4)
    assert float(lines["Detection Rate (poisoned images flagged as class 10)"]) == \
        pytest.approx(flagged.detection_rate, abs=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_examples_eval_py_scores_the_files(net, gen_dir, fmt):
    clean, poisoned = gen_dir / "clean_faces.h5", gen_dir / "sunglasses_faces.h5"
    done = run_script("examples/eval.py", str(clean), str(poisoned), str(net["paths"][fmt]))
    assert done.returncode == 0, done.stderr[-3000:]
    served = ServedModel(net["paths"]["savedmodel"])
    flag = net["goodnet"].num_classes
    scores = evaluate(served, load_lab_h5(clean), load_lab_h5(poisoned), flag_class=flag)
    assert done.stdout.strip().splitlines() == [
        f"Clean Classification accuracy: {scores.test_accuracy:.4f}",
        f"Attack Success Rate: {scores.attack_success:.4f}",
        f"False Alarm Rate (clean images flagged as class {flag}): "
        f"{scores.false_alarm_rate:.4f}",
        f"Detection Rate (poisoned images flagged as class {flag}): "
        f"{scores.detection_rate:.4f}",
    ]


def test_eval_classifies_images_with_a_litert_file(net, gen_dir, capsys):
    assert main(["eval", "--images", str(gen_dir / "sunglasses_faces.h5"), "--model",
                 str(net["paths"]["litert"])]) == 0
    classes = [int(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_array_equal(classes, net["expected"][90:].argmax(-1))


# --- keras-prune-guard export -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_command_writes_a_checked_file(net, tmp_path, capsys, fmt):
    out = tmp_path / f"exported{FORMATS[fmt]}"
    code = main(["export", str(net["folder"] / "goodnet_X10.keras"), "--format", fmt,
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert f"Wrote {out} ({fmt})" in capsys.readouterr().out
    assert_agrees(load_model_for_eval(out), net["x"], net["expected"])


def test_export_command_defaults_to_the_model_name(net, tmp_path, capsys, gen_dir):
    model = tmp_path / "goodnet_X10.keras"
    model.write_bytes((net["folder"] / "goodnet_X10.keras").read_bytes())
    assert main(["export", str(model), "--format", "litert", "--check-images",
                 str(gen_dir / "clean_faces.h5")]) == 0
    assert "on 90 images" in capsys.readouterr().out
    assert leftovers(tmp_path) == ["goodnet_X10.keras", "goodnet_X10.tflite"]


def test_export_command_bad_input_exits_2_with_one_line(net, tmp_path, capsys):
    keras_file = str(net["folder"] / "goodnet_X10.keras")
    net["b_prime"].save(tmp_path / "bprime_X10.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip file")
    cases = [
        (["export", str(tmp_path / "missing.keras")], "missing.keras: found no such file"),
        (["export", str(net["paths"]["onnx"])], "goodnet_X10.onnx: found a file; expected a "
         "GoodNet .keras file"),
        (["export", str(tmp_path / "bprime_X10.keras"), "--format", "onnx"],
         "bprime_X10.keras: found a Functional model"),
        (["export", str(tmp_path / "broken.keras")], "broken.keras"),
        (["export", keras_file, "--format", "onnx", "--out", str(tmp_path / "g.tflite")],
         "--out " + str(tmp_path / "g.tflite") + ": path for format='onnx' must end in .onnx"),
        (["export", keras_file, "--format", "litert", "--check-images",
          str(tmp_path / "faces.h5")], "faces.h5"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("keras-prune-guard export: error: ") and expected in err, err
    assert leftovers(tmp_path) == ["bprime_X10.keras", "broken.keras"]


@pytest.mark.slow
def test_export_command_in_a_fresh_process(tmp_path):
    done = run_script("-m", "keras_prune_guard.cli", "export", str(tmp_path / "g.keras"),
                      "--format", "onnx")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("keras-prune-guard")]
    assert len(lines) == 1 and "g.keras: found no such file" in lines[0]
    assert "Traceback" not in done.stderr


def test_export_command_refuses_an_unknown_format(capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "g.keras", "--format", "tflite"])
    assert info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


# --- the built-in benchmark's test files ------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_goodnet(demo_bench):
    """The reduced benchmark of test_demo.py (6 identities), its BadNet, B' and GoodNet."""
    paths = demo_bench
    bad = load_network(paths.model)
    b_prime = prune(bad, load_lab_h5(paths.valid), thresholds=[10], verbose=0).snapshots[10.0]
    return GoodNetModel(bad, b_prime), paths


def test_every_format_agrees_on_the_benchmark_test_files(benchmark_goodnet, tmp_path):
    goodnet, paths = benchmark_goodnet
    x_test, _ = load_lab_h5(paths.test)
    x_bd, _ = load_lab_h5(paths.bd_test)
    x = np.concatenate([x_test, x_bd])
    expected = goodnet.predict(x, verbose=0)
    assert expected.shape == (110, 7)
    for fmt, path in export_all(goodnet, tmp_path).items():
        assert_agrees(WRAPPERS[fmt](path), x, expected)


def test_broken_files_get_clear_errors(tmp_path, capsys, gen_dir):
    for suffix, wrapper, runtime in ((".onnx", OnnxModel, "ONNX Runtime"),
                                     (".tflite", LiteRTModel, "the LiteRT interpreter")):
        path = tmp_path / f"broken{suffix}"
        path.write_bytes(b"\x00 not a model " * 64)
        with pytest.raises(ValueError, match=f"broken{suffix}: {runtime} cannot load it"):
            wrapper(path)
        code = main(["eval", str(gen_dir / "clean_faces.h5"),
                     str(gen_dir / "sunglasses_faces.h5"), str(path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and str(path) in err, err
    with pytest.raises(FileNotFoundError, match="missing.onnx: found no such file"):
        OnnxModel(tmp_path / "missing.onnx")


# --- repair --formats ---------------------------------------------------------------------------


@pytest.mark.slow
def test_repair_writes_every_format_and_scores_them(gen_dir, tmp_path, capsys):
    out = tmp_path / "out"
    clean, poisoned = gen_dir / "clean_faces.h5", gen_dir / "sunglasses_faces.h5"
    code = main(["repair", "--weights", str(gen_dir / "bd_weights.weights.h5"),
                 "--valid", str(clean), "--test", str(clean), "--poisoned", str(poisoned),
                 "--thresholds", "4", "--formats", "savedmodel", "onnx", "litert",
                 "--fine-tune-epochs", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    row = json.loads((out / "report" / "report.json").read_text())["rows"][0]
    assert {k for k in row["files"] if k.startswith("goodnet_")} == {
        "goodnet_savedmodel", "goodnet_onnx", "goodnet_litert", "goodnet_keras"}
    data = load_lab_h5(clean), load_lab_h5(poisoned)
    for suffix in FORMATS.values():
        scores = evaluate(load_model_for_eval(out / f"goodnet_X4{suffix}"), *data,
                          flag_class=10, true_labels=load_true_labels(poisoned))
        assert scores.to_dict() == row["goodnet"]


def test_repair_refuses_a_missing_runtime_before_the_sweep(gen_dir, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    out = tmp_path / "out"
    code = main(["repair", "--weights", str(gen_dir / "bd_weights.weights.h5"),
                 "--valid", str(gen_dir / "clean_faces.h5"), "--formats", "onnx",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "Ranking" not in captured.out and not out.exists()
    assert captured.err.startswith("keras-prune-guard repair: error: --formats onnx needs "
                                   "tf2onnx")
    assert '[onnx]"' in captured.err and len(captured.err.strip().splitlines()) == 1
