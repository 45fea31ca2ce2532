import numpy as np
import pytest

from tflm.layers import MultiHeadAttention
from tests.helpers import assert_cached_decoding_matches, run_layer_test, to_numpy
from tests.layers.references import numpy_rope


def numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def dense(layer, x):
    """x @ kernel (+ bias, when the layer has one)."""
    y = x @ to_numpy(layer.kernel)
    return y + to_numpy(layer.bias) if layer.use_bias else y


def numpy_attention(layer, x, causal=False, padding_mask=None, rotary=False, window=None):
    """softmax(Q K^T / sqrt(d_k) + mask) V with the layer's own weights; with a `window`,
    position i sees positions i - window + 1 .. i."""
    n, k_heads, h = layer.num_heads, layer.num_kv_heads, layer.head_dim
    b, t, _ = x.shape
    qkv = dense(layer.qkv, x)
    q = qkv[..., : n * h].reshape(b, t, n, h)
    k = qkv[..., n * h : (n + k_heads) * h].reshape(b, t, k_heads, h)
    v = qkv[..., (n + k_heads) * h :].reshape(b, t, k_heads, h)
    if rotary:
        q, k = numpy_rope(q), numpy_rope(k)
    k = np.repeat(k, n // k_heads, axis=2)  # query head i reads kv head i // group
    v = np.repeat(v, n // k_heads, axis=2)
    scores = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(h)
    mask = np.zeros((b, 1, t, t))
    if causal:
        mask = mask + np.triu(np.full((t, t), -1e9), k=1)
    if window is not None:
        mask = mask + np.tril(np.full((t, t), -1e9), k=-window)
    if padding_mask is not None:
        mask = mask + np.where(padding_mask, 0.0, -1e9)[:, None, None, :]
    y = np.einsum("bnqk,bknh->bqnh", numpy_softmax(scores + mask), v).reshape(b, t, n * h)
    return dense(layer.output_projection, y)


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,causal,rotary",
    [(4, None, True, False), (4, None, False, False), (4, 2, True, False), (4, 1, True, True)],
)
def test_matches_numpy_reference(num_heads, num_kv_heads, causal, rotary):
    x = np.random.default_rng(0).normal(size=(2, 7, 16)).astype("float32")
    layer = run_layer_test(
        MultiHeadAttention,
        dict(num_heads=num_heads, num_kv_heads=num_kv_heads, causal=causal, rotary=rotary),
        x,
        expected_output_shape=(2, 7, 16),
        expected_num_trainable_weights=4,  # fused qkv and output projections, with biases
    )
    out = to_numpy(layer(x))
    np.testing.assert_allclose(
        out, numpy_attention(layer, x, causal=causal, rotary=rotary), atol=1e-5
    )


@pytest.mark.parametrize("causal", [True, False])
def test_padding_mask_matches_numpy_reference(causal):
    x = np.random.default_rng(1).normal(size=(2, 6, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    layer = run_layer_test(
        MultiHeadAttention,
        dict(num_heads=2, causal=causal),
        {"x": x, "padding_mask": mask},
        expected_output_shape=(2, 6, 8),
        expected_num_trainable_weights=4,
    )
    out = to_numpy(layer(x, padding_mask=mask))
    expected = numpy_attention(layer, x, causal=causal, padding_mask=mask)
    np.testing.assert_allclose(out[mask], expected[mask], atol=1e-5)


def test_causal_attention_never_looks_ahead():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 8, 16)).astype("float32")
    changed = x.copy()
    changed[:, 5:] = rng.normal(size=(1, 3, 16))
    layer = MultiHeadAttention(num_heads=4, causal=True)
    np.testing.assert_allclose(to_numpy(layer(x))[:, :5], to_numpy(layer(changed))[:, :5], atol=1e-6)
    assert not np.allclose(to_numpy(layer(x))[:, 5:], to_numpy(layer(changed))[:, 5:])


@pytest.mark.parametrize(
    "num_kv_heads,rotary,window", [(None, False, None), (2, True, None), (1, False, 3)]
)
def test_cached_decoding_matches_full_sequence(num_kv_heads, rotary, window):
    x = np.random.default_rng(3).normal(size=(2, 9, 16)).astype("float32")
    layer = MultiHeadAttention(
        num_heads=4, num_kv_heads=num_kv_heads, causal=True, rotary=rotary, sliding_window=window
    )
    cache = assert_cached_decoding_matches(layer, x, prefill=4, max_length=12)
    assert cache.shape == (2, 2, 12, num_kv_heads or 4, 4)


def test_bad_head_counts_are_errors():
    with pytest.raises(ValueError, match="num_heads=3 must divide the hidden width 16"):
        MultiHeadAttention(num_heads=3)(np.zeros((1, 2, 16), "float32"))
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        MultiHeadAttention(num_heads=4, num_kv_heads=3)


def test_cache_needs_causal_attention():
    layer = MultiHeadAttention(num_heads=2, causal=False)
    layer(np.zeros((1, 2, 8), "float32"))
    with pytest.raises(ValueError, match="cache needs causal"):
        layer(np.zeros((1, 2, 8), "float32"), cache=layer.init_cache(1, 4), cache_index=0)


@pytest.mark.parametrize("use_bias,num_weights", [(True, 4), (False, 2)])
def test_layer_checks_with_dropout(use_bias, num_weights):
    x = np.random.default_rng(4).normal(size=(2, 5, 8)).astype("float32")
    run_layer_test(
        MultiHeadAttention,
        dict(num_heads=2, num_kv_heads=1, causal=True, rotary=True, dropout=0.1, use_bias=use_bias),
        x,
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=num_weights,
    )


def test_heads_wider_than_the_input_and_biases_on_qkv_only_match_numpy():
    # Qwen2's biases (q, k and v only) and heads of 8 where 16 / 4 would give 4
    x = np.random.default_rng(5).normal(size=(2, 7, 16)).astype("float32")
    layer = run_layer_test(
        MultiHeadAttention,
        dict(num_heads=4, num_kv_heads=2, head_dim=8, causal=True, rotary=True, use_bias=False,
             qkv_bias=True),
        x,
        expected_output_shape=(2, 7, 16),
        expected_num_trainable_weights=3,  # qkv kernel and bias, output kernel
    )
    assert layer.qkv.kernel.shape == (16, (4 + 2 * 2) * 8)
    assert layer.output_projection.kernel.shape == (32, 16)
    assert not layer.output_projection.use_bias
    np.testing.assert_allclose(to_numpy(layer(x)), numpy_attention(layer, x, True, rotary=True),
                               atol=1e-5)
    cache = assert_cached_decoding_matches(layer, x, prefill=3, max_length=10)
    assert cache.shape == (2, 2, 10, 2, 8)


def test_sliding_window_matches_numpy_and_decodes_with_a_cache():
    x = np.random.default_rng(6).normal(size=(2, 11, 16)).astype("float32")
    layer = run_layer_test(
        MultiHeadAttention,
        dict(num_heads=4, num_kv_heads=2, causal=True, rotary=True, sliding_window=3),
        x,
        expected_output_shape=(2, 11, 16),
        expected_num_trainable_weights=4,
    )
    expected = numpy_attention(layer, x, causal=True, rotary=True, window=3)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)
    assert not np.allclose(expected, numpy_attention(layer, x, causal=True, rotary=True), atol=1e-3)
    mask = np.ones((2, 11), bool)
    mask[1, 9:] = False  # right padding, as generation has
    np.testing.assert_allclose(to_numpy(layer(x, padding_mask=mask))[mask], expected[mask], atol=1e-5)
    assert_cached_decoding_matches(layer, x, prefill=5, max_length=14)
    with pytest.raises(ValueError, match="sliding_window=4 needs causal attention"):
        MultiHeadAttention(num_heads=2, sliding_window=4)
