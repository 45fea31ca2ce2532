"""Several replicas compute what one process computes on the whole batch."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import ROOT
from tflm.training.distribute import distribution_strategy, is_chief, is_multi_worker

# Keras clips each replica's gradients before they are summed (a global norm per
# replica, not of the sum), so exact agreement with one process needs clipping off.
NO_CLIP = ("optimizer.global_clipnorm=null", "train.max_steps=20", "train.eval_every=10",
           "train.jit_compile=false")


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_match_one_process_with_the_same_global_batch(
        tflm_train, scalars, tmp_path):
    single = tflm_train.run(tmp_path / "single", *NO_CLIP)
    assert single.returncode == 0, single.stderr

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(tflm_train.start(tmp_path / "cluster", *NO_CLIP,
                                        env={**os.environ, **env}))
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert "Saved" in outputs[0] and "Saved" not in outputs[1]  # only the chief writes

    one = scalars(tmp_path / "single" / "logs" / "train", "loss")
    two = scalars(tmp_path / "cluster" / "logs" / "train", "loss")
    assert sorted(two) == sorted(one) == list(range(1, 21))
    np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], atol=1e-5)
    assert one[20] < one[1] - 0.3  # it trained


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tests.helpers import tiny_gpt
    from tflm.training import adamw

    def run(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = tiny_gpt(hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
            model.build((None, 16))
            model.compile(optimizer=adamw(model, 1e-2, global_clipnorm=None), jit_compile=False)
        ids = np.random.default_rng(0).integers(0, 11, (64, 17)).astype("int32")
        data = tf.data.Dataset.from_tensor_slices((ids[:, :-1], ids[:, 1:])).batch(8)
        history = model.fit(data, epochs=2, verbose=0)
        return history.history["loss"], float(np.abs(model.get_weights()[0]).sum())

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    print(json.dumps({"one": run(tf.distribute.get_strategy()), "two": run(mirrored)}))
""")


def test_mirrored_strategy_over_two_cpu_devices_matches_one_device():
    result = subprocess.run([sys.executable, "-c", MIRRORED], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(runs["two"][0], runs["one"][0], atol=1e-5)
    np.testing.assert_allclose(runs["two"][1], runs["one"][1], rtol=1e-5)


def test_strategy_and_chief_follow_the_cluster_description(monkeypatch):
    import tensorflow as tf

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribution_strategy() is tf.distribute.get_strategy()  # one CPU: the default
    assert is_chief() and not is_multi_worker()
    cluster = {"worker": ["a:1", "b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert is_multi_worker() and not is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert is_chief()
    cluster = {"chief": ["c:0"], "worker": ["a:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not is_chief()


DATA_PARALLEL = textwrap.dedent("""
    import json, os
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, keras
    import numpy as np
    from tests.helpers import tiny_gpt
    from tflm.training.distribute import distribution_strategy

    def run():
        keras.utils.set_random_seed(0)
        model = tiny_gpt(hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
        model.build((None, 16))
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="auto", metrics=[])
        ids = np.random.default_rng(0).integers(0, 11, (64, 17)).astype("int32")
        history = model.fit(ids[:, :-1], ids[:, 1:], batch_size=8, epochs=2, shuffle=False, verbose=0)
        return history.history["loss"]

    one = run()
    scope = distribution_strategy()
    assert len(jax.devices()) == 2 and scope.num_replicas_in_sync == 2
    assert isinstance(keras.distribution.distribution(), keras.distribution.DataParallel)
    print(json.dumps({"one": one, "two": run()}))
""")


def test_jax_data_parallel_over_two_devices_matches_one_device():
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(runs["two"], runs["one"], atol=1e-5)
