import warnings

import keras
import numpy as np
import pytest

from tests.helpers import (
    assert_cached_decoding_matches, random_ids, tiny_encoder, tiny_gpt, to_numpy,
)
from tflm.generation.decode import compiled_loops
from tflm.layers import Dense, TokenEmbedding
from tflm.models import GPT


def sharp_gpt(**overrides):
    """A tiny GPT whose logits are sharp enough for greedy decoding to make real choices,
    with the same weights on every backend."""
    model = tiny_gpt(vocab_size=23, num_layers=2, hidden_dim=32, num_heads=4, intermediate_dim=64,
                     max_sequence_length=32, **overrides)
    model.build((1, 8))
    rng = np.random.default_rng(3)
    weights = []
    for w in model.get_weights():  # matrices ~ N(0, 0.06); norm scales and biases as they are
        if w.ndim > 1:
            w = rng.normal(0, 0.06, w.shape).astype(w.dtype)
        weights.append(w)
    model.set_weights(weights)
    return model


@pytest.mark.backend_independent
def test_int8_quantizes_every_projection_and_the_embedding_without_warnings():
    model = sharp_gpt()
    x = random_ids((2, 12), 23)
    before = to_numpy(model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Keras warns once for each layer it skips
        model.quantize("int8")
    quantizable = [layer for layer in model._flatten_layers()
                   if isinstance(layer, (Dense, TokenEmbedding))]
    assert len(quantizable) == 2 * 4 + 1
    assert all(layer.quantization_mode == "int8" for layer in quantizable)
    after = to_numpy(model(x))
    assert not np.array_equal(after, before)
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()
    with pytest.raises(ValueError, match="already quantized"):
        model.quantize("int8")


def test_int8_projection_is_int8_weights_per_channel_and_activations_per_row():
    """A numpy reference of what the docstring promises, on one block projection."""
    model = sharp_gpt(use_bias=True)
    dense = model.blocks[0].attention.qkv
    kernel, bias = to_numpy(dense.kernel), to_numpy(dense.bias)
    model.quantize("int8")
    x = np.random.default_rng(0).normal(size=(3, 32)).astype("float32")

    weight_scale = 127 / np.abs(kernel).max(axis=0)  # one scale per output channel
    weights = to_numpy(dense._kernel)
    assert weights.dtype == np.int8
    off = np.abs(weights - np.round(kernel * weight_scale))  # ties may round either way
    assert off.max() <= 1 and off.mean() < 1e-3
    row_scale = 127 / np.abs(x).max(axis=1, keepdims=True)  # one scale per row of activations
    rows = np.round(x * row_scale)
    expected = (rows @ weights) / (row_scale * weight_scale) + bias
    np.testing.assert_allclose(to_numpy(dense(x)), expected, rtol=1e-4, atol=1e-4)


def test_int8_cached_decoding_and_generate_use_the_quantized_weights():
    model = sharp_gpt()
    prompts = random_ids((8, 5), 23, seed=1).tolist()
    model.generate(prompts, 16, stop_tokens=[])  # compiles a loop on the float weights
    model.quantize("int8")
    assert not compiled_loops(model)  # that loop would still read the float weights
    assert_cached_decoding_matches(model, random_ids((2, 10), 23), prefill=4, atol=1e-4)

    fresh = sharp_gpt()  # the same weights, quantized before any loop was compiled
    fresh.quantize("int8")
    assert model.generate(prompts, 16, stop_tokens=[]) == fresh.generate(prompts, 16, stop_tokens=[])


@pytest.mark.backend_independent
def test_quantized_gpt_saves_and_loads_quantized(tmp_path):
    model = sharp_gpt()
    model.quantize("int8")
    x = random_ids((2, 12), 23)
    expected = to_numpy(model(x))

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(to_numpy(loaded(x)), expected)
    assert loaded.blocks[1].feed_forward.down.quantization_mode == "int8"

    model.save_to_preset(tmp_path / "preset")
    preset = GPT.from_preset(str(tmp_path / "preset"), dropout=0.1)  # overrides rebuild it
    np.testing.assert_array_equal(to_numpy(preset(x)), expected)


@pytest.mark.backend_independent
def test_encoder_quantizes_and_chunked_loss_needs_float_weights():
    encoder = tiny_encoder()
    inputs = {"token_ids": random_ids((2, 6), 23), "padding_mask": np.ones((2, 6), "int32")}
    before = to_numpy(encoder(inputs)["sequence_output"])
    encoder.quantize("int8")
    after = to_numpy(encoder(inputs)["sequence_output"])
    assert encoder.pooler.quantization_mode == "int8"
    np.testing.assert_allclose(after, before, atol=0.1)

    model = sharp_gpt()
    model.quantize("int8")
    with pytest.raises(ValueError, match="unquantized output projection"):
        model.compile(loss_chunk_size=4)
