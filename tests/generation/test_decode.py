"""Generation on token ids: backend-neutral (these tests also run under JAX)."""

import itertools

import numpy as np
import pytest
from keras import ops

from tests.helpers import log_softmax
from tflm.generation import Beam, Greedy, Random, TopK, TopP
from tflm.generation.decode import compiled_loops, make_decode_loop


def full_forward_greedy(model, prompt, steps):
    # One fixed length for every pass (the causal model's logits at a position do not see
    # the zeros after it), so that JAX compiles each op once rather than once a length.
    ids = np.zeros((1, len(prompt) + steps), "int32")
    ids[0, : len(prompt)] = prompt
    for position in range(len(prompt), len(prompt) + steps):
        logits = ops.convert_to_numpy(model(ids))
        ids[0, position] = np.argmax(logits[0, position - 1])
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("block", ["transformer", "lstm"])
def test_greedy_equals_argmax_of_full_forward_passes(make_gpt, block):
    model = make_gpt(block)
    prompt = [3, 1, 4, 1, 5]
    expected = full_forward_greedy(model, prompt, 12)
    assert model.generate(prompt, max_new_tokens=12) == expected
    assert len(set(expected)) > 1  # a non-trivial sequence


@pytest.mark.parametrize("block", ["transformer", "lstm"])
def test_a_batch_of_different_lengths_equals_each_prompt_alone(make_gpt, block):
    model = make_gpt(block)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [2, 7], [1, 8, 2, 8]]
    together = model.generate(prompts, max_new_tokens=9)
    assert together == [model.generate(p, max_new_tokens=9) for p in prompts]
    beams = model.generate(prompts, max_new_tokens=6, sampler=Beam(3))
    assert beams == [model.generate(p, max_new_tokens=6, sampler=Beam(3)) for p in prompts]


def test_same_seed_same_tokens_other_seed_other_tokens(make_gpt):
    model = make_gpt()
    prompts = [[1, 2, 3], [4, 5]]
    first = model.generate(prompts, 20, sampler=Random(temperature=1.5), seed=7)
    assert model.generate(prompts, 20, sampler=Random(temperature=1.5), seed=7) == first
    assert model.generate(prompts, 20, sampler=Random(temperature=1.5), seed=8) != first


def test_top_k_never_picks_outside_the_k_best(make_gpt):
    model = make_gpt()
    prompt = [1, 2, 3]
    for seed in range(3):
        generated = model.generate(prompt, 10, sampler=TopK(3, temperature=3.0), seed=seed)
        # one causal pass over the whole sequence gives the logits before each choice
        logits = ops.convert_to_numpy(model(np.array([prompt + generated], "int32")))[0]
        for position, token in enumerate(generated, start=len(prompt) - 1):
            assert token in np.argsort(logits[position])[-3:]


def test_stop_tokens_end_exactly_at_the_first_stop(make_gpt):
    model = make_gpt()
    prompts = [[3, 1, 4], [2, 7, 1, 8]]
    free = model.generate(prompts, 16)
    stop = free[0][5]
    stopped = model.generate(prompts, 16, stop_tokens=[stop])
    for row, out in zip(free, stopped):
        cut = row.index(stop) if stop in row else len(row)
        assert out == row[:cut]
    assert len(stopped[0]) == free[0].index(stop) <= 5


def test_beam_search_with_one_beam_is_greedy(make_gpt):
    model = make_gpt()
    prompts = [[3, 1, 4], [2]]
    assert model.generate(prompts, 10, sampler=Beam(1)) == model.generate(prompts, 10)


def sequence_log_probs(model, prompt, vocab_size, length):
    """continuation (of at most `length` tokens) -> its log-probability after `prompt`, in
    float64, from one forward pass over every continuation of `length` tokens."""
    continuations = list(itertools.product(range(vocab_size), repeat=length))
    ids = np.array([prompt + list(c) for c in continuations], "int32")
    log_probs = log_softmax(ops.convert_to_numpy(model(ids)).astype("float64"))
    table = {}
    for row, continuation in enumerate(continuations):
        for i, token in enumerate(continuation):  # causal: a prefix's sum is the same in every row
            before = table[continuation[:i]] if i else 0.0
            table[continuation[: i + 1]] = before + log_probs[row, len(prompt) - 1 + i, token]
    return lambda continuation: table[tuple(continuation)]


def test_wide_beam_finds_the_most_likely_sequence(make_gpt):
    model = make_gpt(vocab_size=5)
    prompt = [1, 2]
    log_prob = sequence_log_probs(model, prompt, 5, 3)
    best = max(itertools.product(range(5), repeat=3), key=log_prob)
    # with 25 = 5^2 beams, beam search over 3 tokens is exhaustive
    assert model.generate(prompt, 3, sampler=Beam(25, length_penalty=0.0)) == list(best)
    greedy = model.generate(prompt, 3)
    assert log_prob(best) >= log_prob(greedy)


def test_wide_beam_with_a_stop_token_finds_the_most_likely_ending(make_gpt):
    """A hypothesis that reaches the stop token ends there, with its score (the stop's own
    log-probability included, its length counting the stop) competing with the longer ones."""
    model = make_gpt(vocab_size=5)
    prompt = [1, 2]
    log_prob = sequence_log_probs(model, prompt, 5, 3)
    stopped_early = 0
    for length_penalty in (0.0, 1.0):
        for stop in range(5):
            endings = {c[: c.index(stop) + 1] if stop in c else c
                       for c in itertools.product(range(5), repeat=3)}
            best = max(endings, key=lambda c: log_prob(c) / len(c) ** length_penalty)
            stopped_early += stop in best
            expected = list(best[:-1]) if stop in best else list(best)
            found = model.generate(prompt, 3, sampler=Beam(25, length_penalty=length_penalty),
                                   stop_tokens=[stop])
            assert found == expected, (length_penalty, stop)
    assert 0 < stopped_early < 10  # both cases: the best ended at a stop, and did not


def test_compiles_once_per_length_bucket(make_gpt):
    model = make_gpt()
    model.generate([1, 2], 5)
    model.generate([3, 4, 5], 9)  # same batch, same bucket of total length
    model.generate([1, 2], 5, sampler=Greedy())
    assert len(compiled_loops(model)) == 1
    model.generate([[1, 2], [3]], 5)  # another batch size
    assert len(compiled_loops(model)) == 2


@pytest.mark.parametrize("block, lengths", [(4, [11, 9]), (12, [14, 13])])
def test_prompts_filled_in_blocks_decode_as_one_token_at_a_time(make_gpt, block, lengths):
    """Prompts longer than a prefill block; with 12 the second block moves back to end at S."""
    model = make_gpt()
    buffer = np.zeros((2, 16), "int32")
    for i, n in enumerate(lengths):
        buffer[i, :n] = np.random.default_rng(i).integers(0, 11, n)
    new, stops = 16 - max(lengths), np.full([8], -1, "int32")
    run = lambda prefill: ops.convert_to_numpy(make_decode_loop(model, Greedy(), prefill)(  # noqa: E731
        buffer, np.array(lengths, "int32"), np.int32(new), np.int32(0), stops)[0])
    blocks = run(block)
    np.testing.assert_array_equal(blocks, run(1))
    for i, n in enumerate(lengths):
        assert blocks[i, n:n + new].tolist() == full_forward_greedy(model, buffer[i, :n], new)


def test_streaming_yields_what_generate_returns(make_gpt):
    model = make_gpt()
    sampler = TopP(0.8, temperature=2.0)
    assert list(model.stream([1, 2, 3], 12, sampler=sampler, seed=4)) == model.generate(
        [1, 2, 3], 12, sampler=sampler, seed=4
    )


def test_repetition_penalty_matches_a_reference_loop(make_gpt):
    model = make_gpt()
    prompt, penalty = [1, 2, 3], 3.0
    ids = np.zeros((1, 18), "int32")  # one length for every pass, as in full_forward_greedy
    ids[0, :3] = prompt
    for position in range(3, 18):  # CTRL's rule on full forward passes, by hand
        logits = ops.convert_to_numpy(model(ids))[0, position - 1]
        seen = np.isin(np.arange(len(logits)), ids[0, :position])
        logits = np.where(seen, np.where(logits > 0, logits / penalty, logits * penalty), logits)
        ids[0, position] = np.argmax(logits)
    penalized = model.generate(prompt, 15, sampler=Greedy(repetition_penalty=penalty))
    assert penalized == ids[0, 3:].tolist()
    assert penalized != model.generate(prompt, 15)


def test_prompt_too_long_is_an_error_unless_truncated(make_gpt):
    model = make_gpt()
    prompt = list(np.arange(40) % 11)
    with pytest.raises(ValueError, match="A prompt of 40 tokens plus max_new_tokens=10 exceeds .* 48"):
        model.generate(prompt, 10)
    truncated = model.generate(prompt, 10, truncate=True)
    assert truncated == model.generate(prompt[-38:], 10)


def test_bad_input_is_an_error(make_gpt):
    model = make_gpt()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([1, 11], 3)
    with pytest.raises(ValueError, match="is empty"):
        model.generate([[1], []], 3)
    with pytest.raises(ValueError, match="max_new_tokens must be between 1 and 47"):
        model.generate([1], 48)
    with pytest.raises(ValueError, match="Text prompts need a model with a tokenizer"):
        model.generate("hello", 3)
    with pytest.raises(ValueError, match="Unknown sampler 'nucleus'"):
        model.generate([1], 3, sampler="nucleus")
    with pytest.raises(ValueError, match="Beam search cannot stream"):
        list(model.stream([1], 3, sampler="beam"))
