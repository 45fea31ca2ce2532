import math

import numpy as np
import pytest

from tflm.layers import FeedForward, normalization
from tests.helpers import run_layer_test, to_numpy


def gelu_exact(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1 + np.exp(-x))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "swiglu"])
def test_matches_numpy_reference(activation):
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    layer = run_layer_test(FeedForward, dict(intermediate_dim=12, activation=activation), x,
                           expected_output_shape=(2, 3, 8), expected_num_trainable_weights=4)
    out = to_numpy(layer(x))
    h = x @ to_numpy(layer.up.kernel) + to_numpy(layer.up.bias)
    if activation == "swiglu":
        h = silu(h[..., :12]) * h[..., 12:]
    else:
        h = {"gelu": gelu_exact, "gelu_tanh": gelu_tanh, "relu": lambda v: np.maximum(v, 0)}[
            activation
        ](h)
    expected = h @ to_numpy(layer.down.kernel) + to_numpy(layer.down.bias)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rms_norm_matches_formula():
    x = np.random.default_rng(1).normal(size=(2, 8)).astype("float32")
    out = to_numpy(normalization("rmsnorm", 1e-6)(x))
    np.testing.assert_allclose(out, x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6), atol=1e-5)


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="Unknown activation 'tanh'"):
        FeedForward(intermediate_dim=8, activation="tanh")
    with pytest.raises(ValueError, match="Unknown norm 'batchnorm'"):
        normalization("batchnorm", 1e-5)
