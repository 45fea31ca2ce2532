import keras
import numpy as np
import pytest

from tflm.layers import LSTMBlock, TransformerBlock
from tests.helpers import assert_layer_round_trip, to_numpy


def make_block(kind):
    if kind == "lstm":
        return LSTMBlock()
    return TransformerBlock(
        num_heads=2, intermediate_dim=32, causal=True, norm_position=kind
    )


@pytest.mark.parametrize("kind", ["pre", "post", "lstm"])
def test_causal_block_never_looks_ahead(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 16)).astype("float32")
    changed = x.copy()
    changed[:, 6:] = rng.normal(size=(2, 2, 16))
    block = make_block(kind)
    np.testing.assert_allclose(
        to_numpy(block(x))[:, :6], to_numpy(block(changed))[:, :6], atol=1e-5
    )


@pytest.mark.parametrize("kind", ["pre", "post", "lstm"])
def test_cached_decoding_matches_full_sequence(kind):
    x = np.random.default_rng(1).normal(size=(2, 7, 16)).astype("float32")
    block = make_block(kind)
    full = to_numpy(block(x))
    cache = block.init_cache(batch_size=2, max_length=7)
    y, cache = block(x[:, :3], cache=cache, cache_index=0)
    steps = [to_numpy(y)]
    for i in range(3, 7):
        y, cache = block(x[:, i : i + 1], cache=cache, cache_index=i)
        steps.append(to_numpy(y))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_pre_and_post_norm_wiring():
    x = np.random.default_rng(2).normal(size=(1, 4, 8)).astype("float32")
    for position in ("pre", "post"):
        block = TransformerBlock(2, 16, causal=True, norm_position=position)
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
    changed = x.copy()
    changed[:, 4:] = rng.normal(size=(1, 2, 16))
    block = TransformerBlock(2, 32, causal=False, norm_position="post")
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
        TransformerBlock(2, 8, norm_position="sandwich")


@pytest.mark.parametrize("kind", ["pre", "post", "lstm"])
def test_serialization_round_trip(kind):
    x = np.random.default_rng(5).normal(size=(2, 5, 16)).astype("float32")
    assert_layer_round_trip(make_block(kind), x)
