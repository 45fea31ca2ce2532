import numpy as np
import pytest

from tflm.layers import (
    PositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TokenAndPositionEmbedding,
    TokenEmbedding,
)
from tests.helpers import assert_layer_round_trip, to_numpy


def numpy_sinusoidal(positions, dim):
    pe = np.zeros((len(positions), dim))
    for p, pos in enumerate(positions):
        for j in range(dim):
            i = j // 2
            angle = pos / 10000 ** (2 * i / dim)
            pe[p, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return pe


@pytest.mark.parametrize("dim", [6, 7, 32])
def test_sinusoidal_matches_formula(dim):
    x = np.zeros((2, 9, dim), "float32")
    encoding = to_numpy(SinusoidalPositionalEncoding()(x))
    assert encoding.shape == (2, 9, dim)
    np.testing.assert_allclose(encoding[1], numpy_sinusoidal(range(9), dim), atol=1e-5)


def test_sinusoidal_start_index_offsets_positions():
    x = np.zeros((1, 3, 8), "float32")
    encoding = to_numpy(SinusoidalPositionalEncoding()(x, start_index=5))
    np.testing.assert_allclose(encoding[0], numpy_sinusoidal([5, 6, 7], 8), atol=1e-5)


def test_position_embedding_slices_from_start_index():
    layer = PositionEmbedding(sequence_length=10)
    x = np.zeros((2, 3, 4), "float32")
    layer(x)
    table = to_numpy(layer.position_embeddings)
    np.testing.assert_allclose(to_numpy(layer(x, start_index=4))[1], table[4:7])
    assert_layer_round_trip(layer, x)


def numpy_rope(x, start=0, base=10000.0):
    """Rotate each pair (x[j], x[j + d/2]) by the angle pos / base^(2j/d), as complex numbers."""
    d = x.shape[-1]
    half = d // 2
    pairs = x[..., :half] + 1j * x[..., half:]  # (B, T, N, d/2)
    positions = start + np.arange(x.shape[1])
    angles = positions[:, None] / base ** (2 * np.arange(half) / d)  # (T, d/2)
    rotated = pairs * np.exp(1j * angles)[None, :, None, :]
    return np.concatenate([rotated.real, rotated.imag], axis=-1)


def test_rotary_matches_complex_rotation():
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 8)).astype("float32")
    np.testing.assert_allclose(to_numpy(RotaryEmbedding()(x)), numpy_rope(x), atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(RotaryEmbedding()(x, start_index=7)), numpy_rope(x, start=7), atol=1e-4
    )


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, 1, 1, 16)).astype("float32")
    k = rng.normal(size=(1, 1, 1, 16)).astype("float32")
    rope = RotaryEmbedding()

    def score(m, n):
        return float(np.sum(to_numpy(rope(q, start_index=m)) * to_numpy(rope(k, start_index=n))))

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_tied_embedding_projects_back_with_the_same_matrix():
    layer = TokenEmbedding(vocab_size=11, hidden_dim=4)
    ids = np.array([[1, 2, 10]])
    vectors = to_numpy(layer(ids))
    matrix = to_numpy(layer.embeddings)
    np.testing.assert_allclose(vectors[0], matrix[[1, 2, 10]])
    logits = to_numpy(layer(vectors, reverse=True))
    np.testing.assert_allclose(logits, vectors @ matrix.T, atol=1e-5)
    assert len(layer.weights) == 1
    assert_layer_round_trip(layer, ids)


def test_untied_embedding_has_its_own_output_matrix():
    layer = TokenEmbedding(vocab_size=11, hidden_dim=4, tie_weights=False)
    vectors = to_numpy(layer(np.array([[1, 2]])))
    assert len(layer.weights) == 2
    logits = to_numpy(layer(vectors, reverse=True))
    np.testing.assert_allclose(logits, vectors @ to_numpy(layer.reverse_embeddings), atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary", "none"])
def test_token_and_position_embedding(position):
    layer = TokenAndPositionEmbedding(20, 8, 6, position=position)
    ids = np.array([[3, 4, 5], [6, 7, 8]])
    out = to_numpy(layer(ids, start_index=2))
    tokens = to_numpy(layer.token_embedding(ids))
    if position == "learned":
        expected = tokens + to_numpy(layer.position_encoding.position_embeddings)[2:5]
    elif position == "sinusoidal":
        expected = tokens + numpy_sinusoidal([2, 3, 4], 6)
    else:  # rotary acts inside attention
        expected = tokens
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert_layer_round_trip(layer, ids)


def test_unknown_position_kind_is_an_error():
    with pytest.raises(ValueError, match="Unknown position encoding 'alibi'"):
        TokenAndPositionEmbedding(20, 8, 6, position="alibi")
