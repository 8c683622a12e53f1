"""Several devices: ranking, sweep and GoodNet evaluation under a tf.distribute strategy.

The CPU is split into two logical devices, which must happen before TensorFlow
initialises, so the runs happen in a subprocess (this file, run as a script):
it runs the same work without a strategy and under `MirroredStrategy`, on the
generated DeepID BadNet and faces of `gen_dir`, and prints JSON; the tests compare. Two
more subprocesses form a two-worker `MultiWorkerMirroredStrategy` cluster on
127.0.0.1 (TF_CONFIG) and run the streamed sweep and an evaluation. The three processes
start together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ["/cpu:0", "/cpu:1"]

pytestmark = pytest.mark.slow  # one subprocess with two logical CPUs (~60 s)


def _sweep_record(result) -> dict:
    return {
        "order": result.channel_order,
        "means": result.channel_means,
        "curve": [p.to_dict() for p in result.curve],
        "snapshots": {f"{t:g}": s.to_dict() for t, s in result.snapshots.items()},
        "predictions": result.predictions.tolist(),
        "image_steps": result.stats["image_steps"],
    }


def run_devices(data: Path) -> dict:
    """The work, without a strategy and under strategies; returns what the tests compare."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from keras_prune_guard.data.files import lab_h5_dataset, load_lab_h5
    from keras_prune_guard.deploy.evaluate import evaluate, predict_classes
    from keras_prune_guard.detect.goodnet import GoodNetModel
    from keras_prune_guard.model.loading import load_network, num_classes_of
    from keras_prune_guard.model.surgery import insert_channel_mask, pruned_copy, split_at_mask
    from keras_prune_guard.pruning.ranking import channel_ranking
    from keras_prune_guard.pruning.sweep import sweep

    model = load_network(weights_path=data / "bd_weights.weights.h5")
    clean_file, bd_file = data / "clean_faces.h5", data / "sunglasses_faces.h5"
    clean, poisoned = load_lab_h5(clean_file), load_lab_h5(bd_file)
    masked = insert_channel_mask(model)
    head, _ = split_at_mask(masked)
    mirrored = tf.distribute.MirroredStrategy(DEVICES)
    out = {"logical_devices": len(tf.config.list_logical_devices("CPU")),
           "replicas": mirrored.num_replicas_in_sync}
    kwargs = {"poisoned": poisoned, "full_curve": True, "record_predictions": True,
              "batch_size": 50}
    runs = {
        "single": sweep(masked, clean, **kwargs),
        "mirrored": sweep(masked, clean, strategy=mirrored, **kwargs),
        # The file streamed through tf.data, batches of 37 (odd: uneven replica shares).
        "mirrored_streamed": sweep(masked, lab_h5_dataset(clean_file, 37), strategy=mirrored,
                                   **kwargs),
    }
    out["sweeps"] = {name: _sweep_record(result) for name, result in runs.items()}
    out["ranking"] = {
        name: [v.tolist() for v in channel_ranking(head, clean, batch_size=45, strategy=s)]
        for name, s in (("single", None), ("mirrored", mirrored))
    }
    b_prime = pruned_copy(masked, runs["single"].snapshots[4.0].pruned_channels)
    goodnet = GoodNetModel(model, b_prime)
    out["goodnet"] = {}
    for name, s in (("single", None), ("mirrored", mirrored)):
        out["goodnet"][name] = {
            "classes_clean": predict_classes(goodnet, clean[0], 33, strategy=s).tolist(),
            "classes_poisoned": predict_classes(goodnet, poisoned[0], 33, strategy=s).tolist(),
            "b": evaluate(model, clean, poisoned, batch_size=33, strategy=s).to_dict(),
            "b_prime": evaluate(b_prime, clean, poisoned, batch_size=33,
                                strategy=s).to_dict(),
            "goodnet": evaluate(goodnet, lab_h5_dataset(clean_file, 33),
                                lab_h5_dataset(bd_file, 33), flag_class=num_classes_of(model),
                                batch_size=33, strategy=s).to_dict(),
        }
    return out


def run_worker(data: Path) -> dict:
    """One worker of a `MultiWorkerMirroredStrategy` cluster (TF_CONFIG set by the test)."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from keras_prune_guard.data.files import lab_h5_dataset, load_lab_h5
    from keras_prune_guard.deploy.evaluate import evaluate
    from keras_prune_guard.model.loading import load_network
    from keras_prune_guard.model.surgery import insert_channel_mask
    from keras_prune_guard.pruning.sweep import sweep

    model = load_network(weights_path=data / "bd_weights.weights.h5")
    clean_file, bd_file = data / "clean_faces.h5", data / "sunglasses_faces.h5"
    result = sweep(insert_channel_mask(model), lab_h5_dataset(clean_file, 37),
                   poisoned=load_lab_h5(bd_file), full_curve=True, record_predictions=True,
                   batch_size=50, strategy=strategy)
    out = _sweep_record(result)
    out["replicas"] = strategy.num_replicas_in_sync
    out["b"] = evaluate(model, lab_h5_dataset(clean_file, 33), lab_h5_dataset(bd_file, 33),
                        batch_size=33, strategy=strategy).to_dict()
    return out


def _env(data: Path, **extra) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KPG_TEST_DATA=str(data), **extra)
    if "TF_CONFIG" not in extra:
        env.pop("TF_CONFIG", None)
    return env


def _result(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class _Launched:
    """A process started by `launched`, its output going to files."""

    def __init__(self, args: list[str], env: dict, folder: Path, name: str):
        self.out, self.err = folder / f"{name}.stdout", folder / f"{name}.stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=err,
                                         text=True)

    def result(self, timeout: float) -> dict:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return _result(subprocess.CompletedProcess(self.proc.args, code, self.out.read_text(),
                                                   self.err.read_text()))


@pytest.fixture(scope="module")
def launched(gen_dir, tmp_path_factory):
    """The devices run and the two MultiWorkerMirroredStrategy workers (loopback only), all
    started at once: three processes that share no state run side by side on two cores."""
    folder = tmp_path_factory.mktemp("distribute")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    started = {"devices": _Launched([sys.executable, __file__], _env(gen_dir), folder, "devices")}
    for i in range(2):
        started[f"worker{i}"] = _Launched(
            [sys.executable, __file__, "worker"],
            _env(gen_dir, TF_CONFIG=json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": i}})),
            folder, f"worker{i}")
    yield started
    for one in started.values():
        if one.proc.poll() is None:
            one.proc.kill()
            one.proc.wait()


@pytest.fixture(scope="module")
def runs(launched) -> dict:
    return launched["devices"].result(timeout=600)


@pytest.fixture(scope="module")
def workers(launched) -> list[dict]:
    """The two workers' results."""
    return [launched[f"worker{i}"].result(timeout=600) for i in range(2)]


def test_the_subprocess_really_had_two_devices(runs):
    assert runs["logical_devices"] == 2
    assert runs["replicas"] == 2


@pytest.mark.parametrize("name", ["mirrored", "mirrored_streamed"])
def test_mirrored_sweep_is_the_single_device_sweep(runs, name):
    single, other = runs["sweeps"]["single"], runs["sweeps"][name]
    assert other["order"] == single["order"]
    assert other["predictions"] == single["predictions"]  # every image, every step
    assert other["curve"] == single["curve"]
    assert other["snapshots"] == single["snapshots"]
    assert other["image_steps"] == single["image_steps"]
    # Means may differ in the last bits (sums reordered), never more.
    np.testing.assert_allclose(other["means"], single["means"], rtol=1e-6, atol=1e-9)
    assert len(single["predictions"]) == 61 and len(single["predictions"][0]) == 90
    assert 0 < single["snapshots"]["4"]["num_pruned"] < 60


def test_two_workers_give_the_single_device_sweep(runs, workers):
    single = runs["sweeps"]["single"]
    for worker in workers:
        assert worker["replicas"] == 2
        assert worker["order"] == single["order"]
        assert worker["predictions"] == single["predictions"]
        assert worker["curve"] == single["curve"]
        assert worker["snapshots"] == single["snapshots"]
        assert worker["b"] == runs["goodnet"]["single"]["b"]


def test_mirrored_ranking_is_the_single_device_ranking(runs):
    (order_1, means_1), (order_2, means_2) = runs["ranking"]["single"], runs["ranking"]["mirrored"]
    assert order_2 == order_1
    np.testing.assert_allclose(means_2, means_1, rtol=1e-6, atol=1e-9)
    assert order_1 == runs["sweeps"]["single"]["order"]


def test_mirrored_goodnet_evaluation_is_the_single_device_one(runs):
    single, mirrored = runs["goodnet"]["single"], runs["goodnet"]["mirrored"]
    assert mirrored == single
    assert len(single["classes_clean"]) == 90 and len(single["classes_poisoned"]) == 81
    assert single["b"]["attack_success"] > 90
    # The streamed evaluation agrees with the classes predicted from arrays.
    flagged = np.mean(np.asarray(single["classes_clean"]) == 10) * 100
    assert single["goodnet"]["false_alarm_rate"] == pytest.approx(flagged)
    assert 0 < flagged < 10  # B and B' (X=4) disagree on a few clean faces


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = run_worker if sys.argv[1:] == ["worker"] else run_devices
    print(json.dumps(work(Path(os.environ["KPG_TEST_DATA"])), default=float))
