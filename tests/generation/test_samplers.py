import numpy as np
import pytest
from keras import ops

from tflm.generation import Greedy, Random, TopK, TopP
from tflm.generation.samplers import get, gumbel_noise


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.05, 0.5, 0.15, 0.3]], "float32"))
    kept = lambda p: ops.convert_to_numpy(TopP(p).mask(logits))[0] > -1e8
    assert kept(0.7).tolist() == [False, True, False, True]   # 0.5 + 0.3 reaches 0.7
    assert kept(0.5).tolist() == [False, True, False, False]
    assert kept(0.81).tolist() == [False, True, True, True]
    assert kept(1.0).all()


def test_top_k_mask():
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5]], "float32")
    kept = ops.convert_to_numpy(TopK(2).mask(logits))[0] > -1e8
    assert kept.tolist() == [False, True, False, True, False]


def test_repetition_penalty_and_temperature_follow_ctrl():
    logits = np.array([[2.0, -2.0, 1.0]], "float32")
    seen = np.array([[True, True, False]])
    out = ops.convert_to_numpy(Random(temperature=0.5, repetition_penalty=2.0).process(logits, seen))
    np.testing.assert_allclose(out, [[1.0 / 0.5, -4.0 / 0.5, 1.0 / 0.5]])


def test_random_sampling_follows_the_softmax():
    logits = np.tile(np.array([[0.0, 1.0, 2.0, -1.0]], "float32"), (4000, 1))
    draws = np.concatenate(
        [ops.convert_to_numpy(Random()(logits, seed=s, step=3)) for s in range(5)]
    )
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(frequencies, expected, atol=0.01)


def test_noise_is_a_pure_function_of_seed_step_and_position():
    a = ops.convert_to_numpy(gumbel_noise(1, 2, (3, 5)))
    np.testing.assert_array_equal(a, ops.convert_to_numpy(gumbel_noise(1, 2, (3, 5))))
    assert not np.allclose(a, ops.convert_to_numpy(gumbel_noise(1, 3, (3, 5))))
    assert not np.allclose(a[0], a[1])


def test_with_a_seed_a_row_the_noise_of_a_row_does_not_depend_on_its_place():
    rows = ops.convert_to_numpy(gumbel_noise(np.array([7, 3, 7], "int32"), 2, (3, 5)))
    alone = ops.convert_to_numpy(gumbel_noise(np.array([7], "int32"), 2, (1, 5)))
    # the same seed, the same draws (to the last bits: vectorized logarithms may round apart)
    np.testing.assert_allclose(rows[0], rows[2], rtol=1e-6)
    np.testing.assert_allclose(rows[0], alone[0], rtol=1e-6)
    assert not np.allclose(rows[0], rows[1])
    # and a batch of one with a seed for the batch draws the same as with a seed a row
    np.testing.assert_allclose(ops.convert_to_numpy(gumbel_noise(7, 2, (1, 5)))[0], alone[0], rtol=1e-6)


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=(6, 9)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(Greedy()(logits)), logits.argmax(-1))


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="temperature must be positive"):
        Random(temperature=0)
    with pytest.raises(ValueError, match="p must be in"):
        TopP(1.5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        TopK(0)
    with pytest.raises(ValueError, match="go to the sampler's constructor"):
        get(Greedy(), k=3)
    assert isinstance(get("top_k", k=3), TopK)
