import keras
import numpy as np
import pytest

from tests.helpers import run_layer_test, to_numpy
from tflm.layers import Dense


@pytest.mark.parametrize("activation", [None, "tanh"])
def test_equals_keras_dense_bit_for_bit(activation):
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    layer = run_layer_test(Dense, dict(units=5, activation=activation), x,
                           expected_output_shape=(2, 3, 5), expected_num_trainable_weights=2)
    reference = keras.layers.Dense(5, activation=activation)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(reference(x)))
    expected = x @ to_numpy(layer.kernel) + to_numpy(layer.bias)
    np.testing.assert_allclose(to_numpy(layer(x)), np.tanh(expected) if activation else expected,
                               rtol=1e-5, atol=1e-6)


def test_without_bias_and_with_lora_and_int8():
    x = np.random.default_rng(1).normal(size=(1, 1, 8)).astype("float32")
    layer = Dense(4, use_bias=False)
    layer.build(x.shape)
    np.testing.assert_allclose(to_numpy(layer(x)), x @ to_numpy(layer.kernel), rtol=1e-6)

    layer = Dense(4)
    layer.build(x.shape)
    layer.enable_lora(2, b_initializer="ones")  # adapters that change the output
    expected = x @ to_numpy(layer.kernel) + to_numpy(layer.bias)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)

    float_output = to_numpy(layer(x))
    layer = Dense(4)
    layer.build(x.shape)
    reference = to_numpy(layer(x))
    layer.quantize("int8")
    assert layer.quantization_mode == "int8"
    np.testing.assert_allclose(to_numpy(layer(x)), reference, atol=0.05)
    assert not np.allclose(float_output, reference)


def test_tensorflow_xla_keeps_the_bias_out_of_the_matrix_vector_product():
    """The reason the layer exists: keras.layers.Dense's product + bias becomes one XLA
    output fusion at batch 1 on CPU (slow), tflm's Dense does not."""
    if keras.backend.backend() != "tensorflow":
        return  # the fusion is TensorFlow's XLA's; JAX's XLA does not make it
    import tensorflow as tf

    x = tf.ones((1, 1, 64))

    def optimized_hlo(layer):
        layer.build(x.shape)
        compiled = tf.function(lambda x: layer(x), jit_compile=True)
        return compiled.experimental_get_compiler_ir(x)(stage="optimized_hlo")

    assert "kind=kOutput" in optimized_hlo(keras.layers.Dense(256))
    assert "kind=kOutput" not in optimized_hlo(Dense(256))
