"""Training on several machines: MultiWorkerMirroredStrategy on the TensorFlow backend.

Keras 3's `fit` does not work under MultiWorkerMirroredStrategy: it fails reducing a
per-replica batch in its symbolic build, then in the per-replica reduction of the train
step (https://github.com/keras-team/keras/issues/20585,
https://github.com/tensorflow/tensorflow/issues/72388). Until it does, this loop stands
in for `fit` there. It is deliberately small: each step runs the model's own
`train_step` (the one `fit` runs, with the same loss, optimizer and metrics) under
`strategy.run` in a compiled function, and it drives the same callbacks, so checkpoints,
TensorBoard and the time budget behave as with `fit`.

Each worker feeds its replicas their slices of the global batch, so N workers compute
what one process computes on the whole batch.
"""

import keras
import tensorflow as tf


def fit_multi_worker(model, train_data, validation_data, validation_steps, callbacks, step,
                     every, epochs, verbose):
    """What `trainer._fit` does with `model.fit`, for a model made under a
    MultiWorkerMirroredStrategy scope. Returns a `keras.callbacks.History`."""
    from tflm.training.distribute import is_chief

    strategy = tf.distribute.get_strategy() if model.distribute_strategy is None \
        else model.distribute_strategy
    train_iterator = iter(_per_replica(strategy, train_data))

    @tf.function
    def train_function(iterator):
        strategy.run(_compiled(model.train_step, model.jit_compile), args=(next(iterator),))
        return model.get_metrics_result()  # read across workers: the global means

    @tf.function
    def test_function(iterator):
        strategy.run(_compiled(model.test_step, model.jit_compile), args=(next(iterator),))
        return model.get_metrics_result()

    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList(
        [*callbacks, history], add_progbar=bool(verbose) and is_chief(), verbose=verbose,
        epochs=epochs, steps=every, model=model,
    )
    model.stop_training = False
    callbacks.on_train_begin()
    first_epoch, done = divmod(step, every)
    for epoch in range(first_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        logs = {}
        for batch in range(done if epoch == first_epoch else 0, every):
            callbacks.on_train_batch_begin(batch)
            logs = _numpy(train_function(train_iterator))
            callbacks.on_train_batch_end(batch, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if validation_data is not None:
            model.reset_metrics()
            validation = iter(_per_replica(strategy, validation_data.take(validation_steps)
                                           if validation_steps else validation_data))
            for _ in range(validation_steps or int(validation_data.cardinality())):
                val_logs = _numpy(test_function(validation))
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callbacks.on_train_end(epoch_logs)
    return history


def _per_replica(strategy, dataset):
    """`dataset` of global batches, distributed so that replica r of all the replicas of
    all the workers gets rows [r * b, (r + 1) * b) of every batch."""
    replicas = strategy.num_replicas_in_sync

    def shard(context):
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def split(*batch):  # (B, ...) -> (local, B / replicas, ...): this worker's replicas
            return tuple(tf.reshape(t, [replicas, -1, *t.shape[1:]])[first : first + local]
                         for t in batch)

        options = tf.data.Options()  # the split above is the sharding
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.map(split).unbatch().with_options(options)  # one batch per replica

    return strategy.distribute_datasets_from_function(shard)


def _compiled(function, jit_compile):
    # XLA has no cross-worker collectives on CPU devices (the gradient all-reduce is in
    # the step), so on CPU workers the step runs as a plain graph.
    jit_compile = bool(jit_compile) and bool(tf.config.list_logical_devices("GPU"))
    return tf.function(function, jit_compile=jit_compile, reduce_retracing=True)


def _numpy(logs):
    return {name: float(value) for name, value in logs.items()}
