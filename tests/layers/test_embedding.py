import numpy as np
import pytest

from tflm.layers import (
    PositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TokenAndPositionEmbedding,
    TokenEmbedding,
)
from tests.helpers import run_layer_test, to_numpy
from tests.layers.references import llama3_frequencies, numpy_rope, numpy_sinusoidal


@pytest.mark.parametrize("dim", [6, 7, 32])
def test_sinusoidal_matches_formula(dim):
    x = np.zeros((2, 9, dim), "float32")
    layer = run_layer_test(SinusoidalPositionalEncoding, {}, x, expected_output_shape=(2, 9, dim),
                           run_training_check=False)  # nothing to train
    encoding = to_numpy(layer(x))
    np.testing.assert_allclose(encoding[1], numpy_sinusoidal(range(9), dim), atol=1e-5)


def test_sinusoidal_start_index_offsets_positions():
    x = np.zeros((1, 3, 8), "float32")
    encoding = to_numpy(SinusoidalPositionalEncoding()(x, start_index=5))
    np.testing.assert_allclose(encoding[0], numpy_sinusoidal([5, 6, 7], 8), atol=1e-5)


def test_position_embedding_slices_from_start_index():
    x = np.zeros((2, 3, 4), "float32")
    layer = run_layer_test(PositionEmbedding, dict(sequence_length=10), x,
                           expected_output_shape=(2, 3, 4), call_kwargs={"start_index": 4},
                           expected_num_trainable_weights=1)
    table = to_numpy(layer.position_embeddings)
    np.testing.assert_allclose(to_numpy(layer(x, start_index=4))[1], table[4:7])


def test_rotary_matches_complex_rotation():
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 8)).astype("float32")
    rope = run_layer_test(RotaryEmbedding, {}, x, expected_output_shape=(2, 5, 3, 8),
                          run_training_check=False)  # nothing to train
    np.testing.assert_allclose(to_numpy(rope(x)), numpy_rope(x), atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(RotaryEmbedding()(x, start_index=7)), numpy_rope(x, start=7), atol=1e-4
    )


LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)


def test_rotary_with_llama3_scaling_matches_the_reference_frequencies():
    # A 16-wide head with base 10000 has wavelengths from 6 to 20,000 positions: with an
    # original context of 64, some are kept, some interpolated and some divided by 8.
    x = np.random.default_rng(2).normal(size=(2, 40, 3, 16)).astype("float32")
    rope = run_layer_test(RotaryEmbedding, dict(scaling=LLAMA3), x,
                          expected_output_shape=(2, 40, 3, 16), run_training_check=False)
    frequencies = llama3_frequencies(16, 10000.0, 8.0, 1.0, 4.0, 64)
    plain = 1 / 10000.0 ** (np.arange(8) / 8)
    assert np.isclose(frequencies, plain).sum() == 1
    assert np.isclose(frequencies, plain / 8).sum() == 5  # and two interpolated
    np.testing.assert_allclose(to_numpy(rope(x, start_index=5)),
                               numpy_rope(x, start=5, frequencies=frequencies), atol=1e-4)
    default = RotaryEmbedding(scaling={"rope_type": "default"})
    np.testing.assert_allclose(to_numpy(default(x)), numpy_rope(x), atol=1e-4)


def test_unsupported_rope_scaling_is_an_error_naming_it():
    with pytest.raises(ValueError, match="Unsupported RoPE scaling 'yarn'"):
        RotaryEmbedding(scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="'llama3' needs high_freq_factor"):
        RotaryEmbedding(scaling={key: v for key, v in LLAMA3.items() if key != "high_freq_factor"})


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
    ids = np.array([[1, 2, 10]])
    layer = run_layer_test(TokenEmbedding, dict(vocab_size=11, hidden_dim=4), ids,
                           expected_output_shape=(1, 3, 4), expected_num_trainable_weights=1)
    vectors = to_numpy(layer(ids))
    matrix = to_numpy(layer.embeddings)
    np.testing.assert_allclose(vectors[0], matrix[[1, 2, 10]])
    logits = to_numpy(layer(vectors, reverse=True))
    np.testing.assert_allclose(logits, vectors @ matrix.T, atol=1e-5)
    assert len(layer.weights) == 1


def test_untied_embedding_has_its_own_output_matrix():
    ids = np.array([[1, 2]])
    # The forward call reads only the embeddings, so one fit step leaves the output matrix
    # as it was: the training check does not apply.
    layer = run_layer_test(TokenEmbedding, dict(vocab_size=11, hidden_dim=4, tie_weights=False),
                           ids, expected_output_shape=(1, 2, 4), expected_num_trainable_weights=2,
                           run_training_check=False)
    vectors = to_numpy(layer(ids))
    assert len(layer.weights) == 2
    logits = to_numpy(layer(vectors, reverse=True))
    np.testing.assert_allclose(logits, vectors @ to_numpy(layer.reverse_embeddings), atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary", "none"])
def test_token_and_position_embedding(position):
    ids = np.array([[3, 4, 5], [6, 7, 8]])
    layer = run_layer_test(
        TokenAndPositionEmbedding,
        dict(vocab_size=20, sequence_length=8, hidden_dim=6, position=position),
        ids,
        expected_output_shape=(2, 3, 6),
        call_kwargs={"start_index": 2},
        expected_num_trainable_weights=2 if position == "learned" else 1,
    )
    out = to_numpy(layer(ids, start_index=2))
    tokens = to_numpy(layer.token_embedding(ids))
    if position == "learned":
        expected = tokens + to_numpy(layer.position_encoding.position_embeddings)[2:5]
    elif position == "sinusoidal":
        expected = tokens + numpy_sinusoidal([2, 3, 4], 6)
    else:  # rotary acts inside attention
        expected = tokens
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_unknown_position_kind_is_an_error():
    with pytest.raises(ValueError, match="Unknown position encoding 'alibi'"):
        TokenAndPositionEmbedding(vocab_size=20, sequence_length=8, hidden_dim=6, position="alibi")
