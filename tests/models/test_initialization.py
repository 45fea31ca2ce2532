"""Every weight starts from its own random draw, with the deviation the models document."""

import math

import keras
import numpy as np
import pytest

from tflm.layers import LSTMBlock, MultiHeadAttention, TransformerBlock
from tflm.models import GPT, Classifier, Encoder, MaskedLM
from tests.helpers import tiny_gpt, to_numpy


def built(name):
    """A preset model of each kind, built (without its tokenizer: TensorFlow-free for JAX)."""
    if name in ("shakespeare-char", "shakespeare-char-lstm"):
        model = GPT.from_preset(name, tokenizer=None)
        model.build((None, 16))
        return model
    inputs = {"token_ids": (None, 16), "padding_mask": (None, 16)}
    encoder = Encoder.from_preset("bert-tiny")
    if name == "bert-tiny":
        encoder.build(inputs)
        return encoder
    if name == "classifier":
        model = Classifier(encoder, num_classes=2)
    else:
        model, inputs = MaskedLM(encoder), {**inputs, "mask_positions": (None, 4)}
    model.build(inputs)
    return model


def random_weights(model):
    """path -> values of the weights drawn at random (not the norm scales and biases, which
    start at constants: zeros, ones, the LSTM's forget-gate ones)."""
    weights = {w.path: to_numpy(w).ravel() for w in model.weights}
    return {path: values for path, values in weights.items() if len(np.unique(values)) > 2}


@pytest.mark.parametrize(
    "name", ["shakespeare-char", "shakespeare-char-lstm", "bert-tiny", "classifier", "masked_lm"]
)
@pytest.mark.backend_independent
def test_no_two_weights_start_equal(name):
    weights = random_weights(built(name))
    assert len(weights) >= 4
    seen = {}
    for path, values in weights.items():
        # compare the leading values: equal draws of any shape share them
        key = values[:64].tobytes()
        assert key not in seen, f"{path} starts equal to {seen[key]}"
        seen[key] = path


def assert_normal(values, stddev, name):
    """Mean and deviation of `values` within 5 standard errors of N(0, stddev)."""
    n = values.size
    assert abs(values.mean()) < 5 * stddev / math.sqrt(n), name
    assert abs(values.std() - stddev) < 5 * stddev / math.sqrt(2 * n), (name, values.std(), stddev)


@pytest.mark.backend_independent
def test_gpt_initialization_matches_gpt2():
    model = built("shakespeare-char")
    layers, std = model.num_layers, model.initializer_range
    assert model.scaled_residual_init
    assert_normal(to_numpy(model.embedding.token_embedding.embeddings).ravel(), std, "embedding")
    for block in model.blocks:
        residual_std = std / math.sqrt(2 * layers)
        assert_normal(to_numpy(block.attention.qkv.kernel).ravel(), std, block.name)
        assert_normal(to_numpy(block.feed_forward.up.kernel).ravel(), std, block.name)
        assert_normal(to_numpy(block.attention.output_projection.kernel).ravel(), residual_std,
                      block.name)
        assert_normal(to_numpy(block.feed_forward.down.kernel).ravel(), residual_std, block.name)


@pytest.mark.backend_independent
def test_unscaled_residual_initialization():
    model = GPT.from_preset("shakespeare-char", scaled_residual_init=False, initializer_range=0.05,
                            tokenizer=None)
    model.build((None, 8))
    for block in model.blocks:
        assert_normal(to_numpy(block.attention.output_projection.kernel).ravel(), 0.05, block.name)
        assert_normal(to_numpy(block.feed_forward.down.kernel).ravel(), 0.05, block.name)


@pytest.mark.backend_independent
def test_encoder_initialization_is_berts_truncated_normal():
    encoder = built("bert-tiny")
    # N(0, 0.02) cut at two deviations has a deviation of 0.02 * sqrt(1 - 4 phi(2) / (2 Phi(2) - 1))
    phi = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    stddev = 0.02 * math.sqrt(1 - 4 * phi / mass)
    for path, values in random_weights(encoder).items():
        assert np.abs(values).max() <= 0.04 + 1e-7, path
        assert_normal(values, stddev, path)


def test_seed_makes_builds_identical():
    def weights(seed):
        keras.utils.set_random_seed(seed)
        return [to_numpy(w) for w in built("shakespeare-char").weights]

    first, again, other = weights(1), weights(1), weights(2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.backend_independent
def test_lstm_gpt_takes_no_transformer_arguments():
    lstm = GPT.from_preset("shakespeare-char-lstm", tokenizer=None)
    assert "num_heads" not in lstm.get_config() and "activation" not in lstm.get_config()
    with pytest.raises(ValueError, match="num_heads, activation configure transformer blocks"):
        tiny_gpt(block="lstm", num_heads=2, activation="relu")
    with pytest.raises(ValueError, match="Transformer blocks need intermediate_dim"):
        tiny_gpt(intermediate_dim=None)


@pytest.mark.parametrize("layer", [MultiHeadAttention(2, causal=True), TransformerBlock(2, 16),
                                   LSTMBlock()], ids=lambda layer: type(layer).__name__)
def test_symbolic_call_with_a_cache(layer):
    layer.build((2, 3, 8))
    cache = layer.init_cache(2, 5)
    x = keras.KerasTensor((2, 3, 8))
    output, new_cache = layer(x, cache=keras.KerasTensor(cache.shape), cache_index=0)
    assert output.shape == (2, 3, 8) and new_cache.shape == cache.shape
    assert layer(x).shape == (2, 3, 8)


def test_gpt_symbolic_call_with_a_cache():
    model = tiny_gpt(num_layers=2)
    cache = model.init_cache(2, 5)
    ids = keras.KerasTensor((2, 3), dtype="int32")
    logits, new_cache = model(ids, cache=[keras.KerasTensor(c.shape) for c in cache],
                              cache_index=0)
    assert logits.shape == (2, 3, 11) and logits.dtype == "float32"
    assert [c.shape for c in new_cache] == [c.shape for c in cache]
    assert model(ids).shape == (2, 3, 11)
