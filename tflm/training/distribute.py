"""Where training runs: the distribution strategy for this machine or cluster.

TensorFlow backend: TPU → MultiWorkerMirroredStrategy (TF_CONFIG names several tasks)
→ MirroredStrategy (several GPUs) → the default strategy. Create the model and its
optimizer under `strategy.scope()` and give `fit` the *global* batch: Keras splits it
across the replicas.

JAX backend: `keras.distribution.DataParallel` over all devices (of all processes,
after `jax.distributed.initialize()` on a multi-host cluster); `scope()` is then empty.
"""

import contextlib
import json
import os
from pathlib import Path

import keras


def distribution_strategy():
    """The strategy for the devices this process sees (see the module docstring)."""
    if keras.backend.backend() == "jax":
        return _jax_data_parallel()
    import tensorflow as tf

    if _on_tpu():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if is_multi_worker():
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_multi_worker():
    """Whether TF_CONFIG describes a cluster of more than one task."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(tasks) for tasks in cluster.values()) > 1


def is_chief():
    """Whether this process writes checkpoints, logs and the final model: the chief task
    of a cluster (worker 0 when there is no chief), and a single process always."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task")
    if not task:
        return True
    if "chief" in tf_config.get("cluster", {}):
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task.get("index", 0)) == 0


def _on_tpu():
    # Only where a TPU is announced: the resolver would otherwise query a metadata server.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
                or Path("/dev/accel0").exists())


class _JaxScope:
    """What the JAX backend needs instead of a strategy: the distribution is global."""

    def __init__(self, num_replicas):
        self.num_replicas_in_sync = num_replicas

    def scope(self):
        return contextlib.nullcontext()


def _jax_data_parallel():
    import jax

    devices = jax.devices()
    if len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return _JaxScope(len(devices))
