"""Checks shared by the layer and model tests, in the spirit of keras-hub's TestCase.

Every layer test goes through `run_layer_test` and every model test through
`run_model_test`; both run `run_serialization_test`. `assert_cached_decoding_matches` is
the one check of incremental decoding. Nothing here imports TensorFlow: the layer and
model tests also run on the JAX backend (tests/test_jax_backend.py).

Inputs: a layer's `input_data` is an array, or a dict of arrays passed as the call's
keyword arguments (`{"x": x, "padding_mask": mask}`); non-tensor options such as
`start_index=2` go in `call_kwargs`. A model takes its `input_data` as one argument (an
array or a dict of arrays), as `fit` gives it.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository

# float16 is what GPUs train in with a loss scale, bfloat16 what TPUs and recent GPUs use.
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")


def tiny_gpt(**overrides):
    """A GPT small enough for seconds; keyword `overrides` change any argument."""
    from tflm.models import GPT

    config = dict(vocab_size=11, num_layers=1, hidden_dim=8, max_sequence_length=8)
    if overrides.get("block", "transformer") == "transformer":
        config.update(num_heads=2, intermediate_dim=16)  # an LSTM GPT takes neither
    return GPT(**{**config, **overrides})


def tiny_encoder(**overrides):
    """An Encoder small enough for seconds; keyword `overrides` change any argument."""
    from tflm.models import Encoder

    config = dict(vocab_size=23, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                  max_sequence_length=10, dropout=0.0)
    return Encoder(**{**config, **overrides})


def run_in_core_tensorflow(code):
    """Run `code` in a fresh Python where tensorflow_text, keras_hub and tflm cannot be
    imported (only core TensorFlow's ops exist, as in TF Serving); return the JSON it
    prints last."""
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in ("tensorflow_text", "keras_hub", "tflm"))
    result = subprocess.run([sys.executable, "-c", "import sys\n" + blocked + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def export_tokenizer(tokenizer, path, detokenize=False):
    """Write `tokenizer` alone as a SavedModel at `path`: a `tokenize` signature (strings ->
    flat `ids` and row `splits`) and, with `detokenize`, one back from (B, T) ids to `texts`."""
    import keras
    import tensorflow as tf

    tokenizer.build(None)  # no weights; Keras exports only built layers
    archive = keras.export.ExportArchive()
    archive.track(tokenizer)

    def tokenize(texts):
        ids = tokenizer.tokenize(texts)
        return {"ids": ids.flat_values, "splits": ids.row_splits}

    archive.add_endpoint("tokenize", tokenize, [tf.TensorSpec([None], tf.string)])
    if detokenize:
        archive.add_endpoint("detokenize", lambda ids: {"texts": tokenizer.detokenize(ids)},
                             [tf.TensorSpec([None, None], tf.int32)])
    archive.write_out(str(path), verbose=False)


def graph_op_types(function, spec):
    """The op types of `function` traced for `spec`: its graph and every function it calls."""
    import tensorflow as tf

    graph = tf.function(function).get_concrete_function(spec).graph.as_graph_def()
    types = {node.op for node in graph.node}
    for library_function in graph.library.function:
        types |= {node.op for node in library_function.node_def}
    return types


def log_softmax(logits):
    """numpy log-softmax over the last axis, in the precision of `logits`."""
    logits = logits - logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def cross_entropy(logits, labels):
    """Per-position cross-entropy of integer `labels` under `logits` (..., C), numpy."""
    return -np.take_along_axis(log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def random_ids(shape, vocab_size, seed=0):
    """Token ids drawn uniformly from `range(vocab_size)`, int32."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=shape).astype("int32")


def as_json(config):
    """A config as it reads back from a file (tuples become lists)."""
    return json.loads(json.dumps(config))


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_all_close(actual, expected, atol=1e-6):
    """Two structures of tensors (a tensor, a tuple, a list, a dict) agree element-wise."""
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=atol),
        actual,
        expected,
    )


def shapes_of(outputs):
    """The shapes of a structure of tensors, as tuples in the same structure."""
    return keras.tree.map_structure(lambda x: tuple(x.shape), outputs)


# -- serialization --------------------------------------------------------------------------


def run_serialization_test(instance, input_data=None, call_kwargs=None):
    """`from_config(get_config())` and `keras.saving` serialize -> JSON -> deserialize
    rebuild `instance` with the same configuration; given `input_data`, the rebuilt
    object computes the same outputs with the same weights. Returns the rebuilt object."""
    config = instance.get_config()
    rebuilt = type(instance).from_config(config)
    assert rebuilt.get_config() == config
    assert as_json(rebuilt.get_config()) == as_json(config)  # and the config is JSON

    serialized = keras.saving.serialize_keras_object(instance)
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is type(instance)
    assert as_json(revived.get_config()) == as_json(config)

    if input_data is not None:
        expected = _call(instance, input_data, call_kwargs)
        _call(revived, input_data, call_kwargs)  # builds it
        revived.set_weights(instance.get_weights())
        assert_all_close(_call(revived, input_data, call_kwargs), expected)
    return revived


# -- layers ---------------------------------------------------------------------------------


def run_layer_test(
    cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    call_kwargs=None,
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=0,
    run_training_check=True,
    run_mixed_precision_check=True,
):
    """The checks every tflm layer passes, each on a fresh `cls(**init_kwargs)`:

    - serialization (`run_serialization_test`), with the same outputs after a round trip;
    - a symbolic call on `keras.KerasTensor`s and an eager call, both giving
      `expected_output_shape` (a shape, or a structure of shapes) in the layer's dtype,
      and building `expected_num_(non_)trainable_weights` weights;
    - one `fit` step of a model around the layer moves every trainable weight;
    - under each mixed-precision policy, variables are float32 while every sublayer
      computes, and the outputs come, in the policy's compute dtype.

    Returns the layer of the eager call and `fit` step, for checks against references.
    """
    run_serialization_test(_instantiate(cls, init_kwargs), input_data, call_kwargs)

    layer = _instantiate(cls, init_kwargs)
    symbolic = _call(layer, _symbolic(input_data), call_kwargs)
    _check_outputs(symbolic, expected_output_shape, layer.compute_dtype, "symbolic call")
    _check_weight_counts(layer, expected_num_trainable_weights, expected_num_non_trainable_weights)

    layer = _instantiate(cls, init_kwargs)
    output = _call(layer, input_data, call_kwargs)
    _check_outputs(output, expected_output_shape, layer.compute_dtype, "eager call")
    _check_weight_counts(layer, expected_num_trainable_weights, expected_num_non_trainable_weights)

    if run_training_check:
        model = _LayerModel(layer, call_kwargs)
        _check_one_fit_step(model, layer, input_data, output)
    if run_mixed_precision_check:
        _check_mixed_precision(cls, init_kwargs, input_data, call_kwargs)
    return layer


class _LayerModel(keras.Model):
    """A model that is one layer, so that `fit` can train it."""

    def __init__(self, layer, call_kwargs):
        super().__init__(name="layer_model")
        self.layer = layer
        self.call_kwargs = call_kwargs

    def call(self, inputs):
        return _call(self.layer, inputs, self.call_kwargs)


# -- models ---------------------------------------------------------------------------------


def run_model_test(
    cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    tmp_path,
    expected_output_dtype=None,
    run_training_check=True,
    run_mixed_precision_check=True,
):
    """`run_layer_test`'s checks for a model, plus a `.keras` round trip:

    - serialization, and a `.keras` save -> load that gives the same class, configuration
      and outputs; `from_config` rebuilds the same number of parameters;
    - a symbolic and an eager call give `expected_output_shape` (a shape, or a dict of
      shapes) in `expected_output_dtype` (default: the model's compute dtype);
    - one `fit` step moves every trainable weight;
    - under each mixed-precision policy, float32 variables and `expected_output_dtype`
      (or the compute dtype) outputs.

    `cls` is the model class or a factory that takes the same arguments (`tiny_encoder`);
    `init_kwargs` values that are layers (a task's encoder) are copied for each instance.
    Returns the model of the eager call and the `fit` step.
    """
    model = _instantiate(cls, init_kwargs)
    run_serialization_test(model, input_data)
    output = model(input_data)
    _check_outputs(output, expected_output_shape, expected_output_dtype or model.compute_dtype,
                   "eager call")
    assert_model_round_trip(model, input_data, tmp_path)

    fresh = _instantiate(cls, init_kwargs)
    symbolic = fresh(_symbolic(input_data))
    _check_outputs(symbolic, expected_output_shape, expected_output_dtype or fresh.compute_dtype,
                   "symbolic call")

    if run_training_check:
        _check_one_fit_step(model, model, input_data, output)
    if run_mixed_precision_check:
        _check_mixed_precision(cls, init_kwargs, input_data, None, expected_output_dtype)
    return model


def assert_model_round_trip(model, inputs, tmp_path):
    """`.keras` save -> load gives the same class, configuration and outputs, and
    `from_config` rebuilds the same number of parameters. Returns the loaded model."""
    expected = model(inputs)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert as_json(restored.get_config()) == as_json(model.get_config())
    assert_all_close(restored(inputs), expected)
    rebuilt = type(model).from_config(model.get_config())
    rebuilt(inputs)
    assert rebuilt.count_params() == model.count_params()
    return restored


def assert_overfits(model, x, y, epochs=60, learning_rate=3e-3, factor=0.2):
    """Under `model.fit` the loss on one fixed batch ends far below where it starts."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=epochs, batch_size=len(x), verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < factor * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"
    return losses


# -- decoding -------------------------------------------------------------------------------


def assert_cached_decoding_matches(layer_or_model, inputs, prefill, max_length=None, atol=1e-5):
    """Decoding with a cache -- the first `prefill` positions of `inputs` (B, T, ...) in one
    call, then one position at a time -- gives the outputs of one full forward pass.

    `max_length` is the cache's length (default T). Returns the final cache.
    """
    full = to_numpy(layer_or_model(inputs))
    batch, length = inputs.shape[:2]
    cache = layer_or_model.init_cache(batch_size=batch, max_length=max_length or length)
    output, cache = layer_or_model(inputs[:, :prefill], cache=cache, cache_index=0)
    steps = [to_numpy(output)]
    for i in range(prefill, length):
        output, cache = layer_or_model(inputs[:, i : i + 1], cache=cache, cache_index=i)
        steps.append(to_numpy(output))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=atol)
    return cache


# -- the parts of the checks ----------------------------------------------------------------


def _call(layer, input_data, call_kwargs=None):
    """A layer takes a dict of inputs as keyword arguments; a model takes it whole."""
    call_kwargs = call_kwargs or {}
    if isinstance(input_data, dict) and not isinstance(layer, keras.Model):
        return layer(**input_data, **call_kwargs)
    return layer(input_data, **call_kwargs)


def _symbolic(input_data):
    return keras.tree.map_structure(lambda x: keras.KerasTensor(x.shape, x.dtype), input_data)


def _instantiate(cls, init_kwargs, dtype=None):
    """`cls(**init_kwargs)`, with a fresh copy of any layer argument, and in `dtype`."""
    kwargs = dict(init_kwargs)
    for name, value in init_kwargs.items():
        if isinstance(value, keras.Layer):
            config = value.get_config()
            if dtype is not None:
                config["dtype"] = dtype
            kwargs[name] = type(value).from_config(config)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return cls(**kwargs)


def _is_float(x):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype))


def _check_outputs(outputs, expected_shape, expected_dtype, what):
    assert shapes_of(outputs) == expected_shape, (
        f"{what}: output shape {shapes_of(outputs)}, expected {expected_shape}"
    )
    for output in keras.tree.flatten(outputs):
        if _is_float(output):
            dtype = keras.backend.standardize_dtype(output.dtype)
            assert dtype == expected_dtype, f"{what}: output dtype {dtype}, expected {expected_dtype}"


def _check_weight_counts(layer, trainable, non_trainable):
    assert layer.built
    assert len(layer.trainable_weights) == trainable, (
        f"{len(layer.trainable_weights)} trainable weights, expected {trainable}: "
        f"{[w.path for w in layer.trainable_weights]}"
    )
    assert len(layer.non_trainable_weights) == non_trainable, (
        f"{len(layer.non_trainable_weights)} non-trainable weights, expected {non_trainable}: "
        f"{[w.path for w in layer.non_trainable_weights]}"
    )


def _check_one_fit_step(model, layer, input_data, outputs):
    """One SGD step of `model.fit` towards random targets moves every trainable weight of
    `layer` (a weight without a gradient, or detached from the loss, stays put)."""
    rng = np.random.default_rng(0)
    targets = keras.tree.map_structure(
        lambda x: rng.normal(size=x.shape).astype("float32"), outputs
    )
    before = [to_numpy(w) for w in layer.trainable_weights]
    assert before, "nothing to train: pass run_training_check=False"
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.tree.map_structure(lambda _: "mse", outputs),
        metrics=None,
    )
    batch_size = len(keras.tree.flatten(input_data)[0])
    model.fit(input_data, targets, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    unchanged = [
        w.path
        for w, value in zip(layer.trainable_weights, before)
        if np.array_equal(to_numpy(w), value)
    ]
    assert not unchanged, f"one fit step left these trainable weights unchanged: {unchanged}"


def _check_mixed_precision(cls, init_kwargs, input_data, call_kwargs, output_dtype=None):
    for name in MIXED_PRECISION_POLICIES:
        policy = keras.DTypePolicy(name)
        layer = _instantiate(cls, init_kwargs, dtype=policy)
        expected_dtype = output_dtype or policy.compute_dtype
        eager = _call(layer, input_data, call_kwargs)
        symbolic = _call(layer, _symbolic(input_data), call_kwargs)
        for what, outputs in (("eager", eager), ("symbolic", symbolic)):
            _check_outputs(outputs, shapes_of(eager), expected_dtype, f"{name} {what} call")
        for weight in layer.weights:
            if _is_float(weight):
                assert weight.dtype == policy.variable_dtype, f"{name}: {weight.path} is {weight.dtype}"
        # Keras has no public walk over a layer's sublayers; keras-hub's TestCase uses this one.
        for sublayer in layer._flatten_layers():  # the layer and all it contains
            assert sublayer.dtype_policy.name == name, (
                f"{name}: sublayer {sublayer.name} computes in {sublayer.dtype_policy.name}"
            )
