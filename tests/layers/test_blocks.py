import keras
import numpy as np
import pytest

from tflm.layers import LSTMBlock, TransformerBlock
from tests.helpers import assert_cached_decoding_matches, run_layer_test, to_numpy

# Each kind of block: its class, its arguments and how many weights it trains.
BLOCKS = {
    "pre": (TransformerBlock, dict(num_heads=2, intermediate_dim=32, causal=True,
                                   norm_position="pre"), 12),
    "post": (TransformerBlock, dict(num_heads=2, intermediate_dim=32, causal=True,
                                    norm_position="post"), 12),
    # Qwen2's biases, wider heads than 16 / 4, Llama 3's RoPE scaling, Mistral's window:
    # two RMSNorm scales, qkv kernel and bias, output kernel, fused gate/up and down kernels
    "llama": (TransformerBlock, dict(
        num_heads=4, num_kv_heads=2, head_dim=8, intermediate_dim=32, causal=True, rotary=True,
        rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8),
        sliding_window=4, activation="swiglu", norm="rmsnorm", use_bias=False, qkv_bias=True,
    ), 7),
    "lstm": (LSTMBlock, dict(), 5),  # norm (2) and LSTM kernel, recurrent kernel, bias
}


def make_block(kind):
    cls, init_kwargs, _ = BLOCKS[kind]
    return cls(**init_kwargs)


@pytest.mark.parametrize("kind", BLOCKS)
def test_layer_checks(kind):
    cls, init_kwargs, num_weights = BLOCKS[kind]
    x = np.random.default_rng(5).normal(size=(2, 5, 16)).astype("float32")
    run_layer_test(cls, init_kwargs, x, expected_output_shape=(2, 5, 16),
                   expected_num_trainable_weights=num_weights)


@pytest.mark.parametrize("kind", BLOCKS)
def test_causal_block_never_looks_ahead(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 16)).astype("float32")
    changed = x.copy()
    changed[:, 6:] = rng.normal(size=(2, 2, 16))
    block = make_block(kind)
    np.testing.assert_allclose(
        to_numpy(block(x))[:, :6], to_numpy(block(changed))[:, :6], atol=1e-5
    )


@pytest.mark.parametrize("kind", BLOCKS)
def test_cached_decoding_matches_full_sequence(kind):
    x = np.random.default_rng(1).normal(size=(2, 7, 16)).astype("float32")
    assert_cached_decoding_matches(make_block(kind), x, prefill=3)


def test_pre_and_post_norm_wiring():
    x = np.random.default_rng(2).normal(size=(1, 4, 8)).astype("float32")
    for position in ("pre", "post"):
        block = TransformerBlock(num_heads=2, intermediate_dim=16, causal=True,
                                 norm_position=position)
        out = to_numpy(block(x))
        n1, n2, attention, ff = block.norm_1, block.norm_2, block.attention, block.feed_forward
        if position == "pre":
            h = x + to_numpy(attention(n1(x)))
            expected = h + to_numpy(ff(n2(h)))
        else:
            h = to_numpy(n1(x + to_numpy(attention(x))))
            expected = to_numpy(n2(h + to_numpy(ff(h))))
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_bidirectional_block_ignores_padded_positions():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 6, 16)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0]], bool)
    block = run_layer_test(
        TransformerBlock,
        dict(num_heads=2, intermediate_dim=32, causal=False, norm_position="post"),
        {"x": x, "padding_mask": mask},
        expected_output_shape=(1, 6, 16),
        expected_num_trainable_weights=12,
    )
    changed = x.copy()
    changed[:, 4:] = rng.normal(size=(1, 2, 16))
    out = to_numpy(block(x, padding_mask=mask))
    np.testing.assert_allclose(out[:, :4], to_numpy(block(changed, padding_mask=mask))[:, :4], atol=1e-5)
    np.testing.assert_allclose(out[:, :4], to_numpy(block(x[:, :4]))[:, :4], atol=1e-5)
    # and it does look both ways: a later real token changes an earlier output
    changed = x.copy()
    changed[:, 3] += 1.0
    assert not np.allclose(out[:, 0], to_numpy(block(changed, padding_mask=mask))[:, 0])


def test_lstm_block_is_residual_lstm_of_normalized_input():
    x = np.random.default_rng(4).normal(size=(2, 5, 8)).astype("float32")
    block = LSTMBlock()
    out = to_numpy(block(x))
    reference = keras.layers.LSTM(8, return_sequences=True)
    reference.build(x.shape)
    reference.set_weights(block.lstm.get_weights())
    expected = x + to_numpy(reference(block.norm_1(x)))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_unknown_norm_position_is_an_error():
    with pytest.raises(ValueError, match="Unknown norm_position 'sandwich'"):
        TransformerBlock(num_heads=2, intermediate_dim=8, norm_position="sandwich")
