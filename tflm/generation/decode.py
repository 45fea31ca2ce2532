"""The cached decode loop, compiled once per (batch, length bucket, sampler) and reused.

One loop serves every sampler: the prompts (right-padded) fill the key/value cache in
blocks of `prefill` tokens up to the shortest one (a recurrent state, which would see
the padding, is fed token by token instead), then
each step feeds one token through the model's own `call` with the cache and writes the
chosen token into a preallocated buffer; rows whose prompt is longer keep their prompt
tokens until they reach their own end. The whole loop is one XLA computation on
TensorFlow (`tf.function(jit_compile=True)`) and one `jax.jit` on JAX; `make_decode_loop`
builds it for `generate` here and for the exported `generate` signature.

Shapes in comments:
    B  prompts in the batch
    K  beams per prompt (1 unless the sampler is `Beam`)
    N  rows the loop decodes, B * K
    T  tokens of a prompt
    S  length of the token buffer: the longest prompt plus max_new_tokens, rounded up
       to LENGTH_BUCKET and at most the model's context
    V  vocabulary size
"""

import codecs
import random
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from tflm.generation import samplers as sampler_lib

LENGTH_BUCKET = 64  # total lengths are rounded up to this, so most calls reuse a loop
MAX_STOP_TOKENS = 8


def generate(
    model,
    prompts,
    max_new_tokens=64,
    sampler="greedy",
    stop_tokens=None,
    seed=None,
    truncate=False,
    **sampler_options,
):
    """Continue each prompt by up to `max_new_tokens` tokens; see `GPT.generate`."""
    sampler = sampler_lib.get(sampler, **sampler_options)
    single, as_text, rows = _prompt_ids(model, prompts)
    stop_ids = _stop_ids(model, stop_tokens, as_text)
    rows = _fit_context(rows, max_new_tokens, model.max_sequence_length, truncate)
    seed = random.getrandbits(31) if seed is None else seed
    completions = _decode(model, rows, max_new_tokens, sampler, stop_ids, seed)
    if as_text:
        completions = [_to_text(model.tokenizer, ids) for ids in completions]
    return completions[0] if single else completions


def stream(model, prompt, max_new_tokens=64, sampler="greedy", stop_tokens=None, seed=None,
           truncate=False, **sampler_options):
    """Yield the continuation of one prompt piece by piece, as it is produced (eagerly).

    Yields text for a text prompt (whole characters only) or token ids for ids. With the
    same seed and sampler it produces what `generate` returns for that prompt alone.
    """
    sampler = sampler_lib.get(sampler, **sampler_options)
    if isinstance(sampler, sampler_lib.Beam):
        raise ValueError("Beam search cannot stream: its best hypothesis is known only at the end.")
    single, as_text, rows = _prompt_ids(model, prompt)
    if not single:
        raise ValueError("stream() takes one prompt.")
    stop_ids = set(_stop_ids(model, stop_tokens, as_text))
    [ids] = _fit_context(rows, max_new_tokens, model.max_sequence_length, truncate)
    seed = random.getrandbits(31) if seed is None else seed
    vocab = model.vocab_size
    seen = _one_hot_any(np.array([ids]), vocab) if sampler.repetition_penalty != 1.0 else None
    cache = model.init_cache(1, len(ids) + max_new_tokens)
    logits, cache = model(np.array([ids], "int32"), cache=cache, cache_index=0)
    logits = logits[:, -1]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for position in range(len(ids), len(ids) + max_new_tokens):
        token = int(ops.convert_to_numpy(sampler(logits, seed, position, seen))[0])
        if token in stop_ids:
            break
        if as_text:
            piece = decoder.decode(_to_bytes(model.tokenizer, [token]))
            if piece:
                yield piece
        else:
            yield token
        if seen is not None:
            seen = seen | (np.arange(vocab) == token)[None]
        logits, cache = model(np.array([[token]], "int32"), cache=cache, cache_index=position)
        logits = logits[:, -1]
    if as_text:
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail


def _prompt_ids(model, prompts):
    """`(single, as_text, rows)`: prompts as lists of token ids."""
    if hasattr(prompts, "numpy"):  # a tensor of ids
        prompts = prompts.numpy()
    single = isinstance(prompts, str) or (
        len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))
    )
    batch = [prompts] if single else list(prompts)
    if not batch:
        raise ValueError("No prompts given.")
    as_text = isinstance(batch[0], str)
    if as_text:
        if model.tokenizer is None:
            raise ValueError("Text prompts need a model with a tokenizer; pass token ids instead.")
        rows = [np.asarray(model.tokenizer.tokenize(text)).astype("int64").tolist() for text in batch]
        eos = model.tokenizer.eos_token_id
        rows = [row if row or eos is None else [eos] for row in rows]  # an empty prompt starts a document
    else:
        rows = [np.asarray(row).astype("int64").tolist() for row in batch]
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"Prompt {i} is empty: give at least one token.")
        if min(row) < 0 or max(row) >= model.vocab_size:
            raise ValueError(
                f"Prompt {i} has a token id outside the vocabulary (0..{model.vocab_size - 1})."
            )
    return single, as_text, rows


def _stop_ids(model, stop_tokens, as_text):
    if stop_tokens is None:
        eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
        return [] if eos is None or not as_text else [eos]
    ids = []
    for token in [stop_tokens] if isinstance(stop_tokens, (str, int)) else stop_tokens:
        if isinstance(token, str):
            if model.tokenizer is None:
                raise ValueError(f"Stop token {token!r} needs a model with a tokenizer.")
            token = model.tokenizer.token_to_id(token)
        ids.append(int(token))
    if len(ids) > MAX_STOP_TOKENS:
        raise ValueError(f"At most {MAX_STOP_TOKENS} stop tokens; got {len(ids)}.")
    return ids


def _fit_context(rows, max_new_tokens, context, truncate):
    if not 1 <= max_new_tokens <= context - 1:
        raise ValueError(
            f"max_new_tokens must be between 1 and {context - 1} (the context is {context})."
        )
    room = context - max_new_tokens
    longest = max(len(row) for row in rows)
    if longest > room:
        if not truncate:
            raise ValueError(
                f"A prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                f"model's context of {context} tokens; shorten it, or pass truncate=True to keep "
                f"its last {room} tokens."
            )
        rows = [row[-room:] for row in rows]
    return rows


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _decode(model, rows, max_new_tokens, sampler, stop_ids, seed):
    """Run the compiled loop; the generated ids of each row, cut at its stop token."""
    context = model.max_sequence_length
    longest = max(len(row) for row in rows)
    total = min(_round_up(longest + max_new_tokens, LENGTH_BUCKET), context)
    prefill = min(max(8, 1 << (longest - 1).bit_length()), total)  # a power of two
    beams = sampler.num_beams if isinstance(sampler, sampler_lib.Beam) else 1

    buffer = np.zeros((len(rows), total), "int32")
    for i, row in enumerate(rows):
        buffer[i, : len(row)] = row
    lengths = np.array([len(row) for row in rows], "int32")
    stops = np.full([MAX_STOP_TOKENS], -1, "int32")
    stops[: len(stop_ids)] = stop_ids

    key = (len(rows), total, prefill, sampler.key())
    functions = compiled_loops(model)
    if key not in functions:
        functions[key] = _compile(model, make_decode_loop(model, sampler, prefill, beams))
    tokens, scores = functions[key](
        buffer, lengths, np.int32(max_new_tokens), np.int32(seed % (1 << 31)), stops
    )
    tokens = ops.convert_to_numpy(tokens).reshape(len(rows), beams, total)
    scores = ops.convert_to_numpy(scores).reshape(len(rows), beams)

    completions = []
    for i, length in enumerate(lengths):
        candidates = [_cut(tokens[i, b, length : length + max_new_tokens], stop_ids) for b in range(beams)]
        if beams > 1:  # rank hypotheses by length-normalized log-probability
            normalized = [
                scores[i, b] / max(1, len(ids) + stopped) ** sampler.length_penalty
                for b, (ids, stopped) in enumerate(candidates)
            ]
            best = int(np.argmax(normalized))
        else:
            best = 0
        completions.append(candidates[best][0])
    return completions


def compiled_loops(model):
    """The model's compiled decode loops, by (batch, total length, prefill, sampler).

    Kept on the model itself (outside Keras' attribute tracking), so they live and die
    with it.
    """
    if "_tflm_decode_loops" not in vars(model):
        object.__setattr__(model, "_tflm_decode_loops", {})
    return vars(model)["_tflm_decode_loops"]


def _cut(ids, stop_ids):
    """`(ids before the first stop token, whether a stop token ended them)`."""
    ids = ids.tolist()
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position], True
    return ids, False


def _one_hot_any(tokens, vocab):
    """(N, V) booleans: which tokens occur in each row of `tokens` (N, T)."""
    return np.any(tokens[:, :, None] == np.arange(vocab)[None, None, :], axis=1)


class DecodeState(NamedTuple):
    """What the decode loop carries from one step to the next."""

    tokens: Any  # (N, S) int32: the prompts, then the tokens chosen so far
    cache: Any  # the model's cache: one entry a block, filled up to `index - 1`
    index: Any  # int32 scalar: the position this step writes
    done: Any  # (N,) bool: rows that produced a stop token or all their new tokens
    seen: Any  # (N, V) bool: tokens in each row so far (repetition penalty only; else (N, 1))
    scores: Any  # (N,) float32: each beam's sum of log-probabilities (beam search only)


def make_decode_loop(model, sampler, prefill, num_beams=1):
    """The decode loop of `model` with `sampler`, as a function of tensors, ready to compile.

    The returned `loop(buffer, lengths, max_new_tokens, seed, stops)` takes
    `buffer` (B, S) int32, the right-padded prompts; `lengths` (B,) their lengths;
    `max_new_tokens` and `seed` int32 scalars; `stops` (MAX_STOP_TOKENS,) int32 stop ids
    padded with -1. It returns `(tokens, scores)`: (N, S) prompts with their
    continuations (N = B * num_beams, the beams of a prompt next to each other) and the
    (N,) beam scores. When the model's cache is positional, the prompts fill it in blocks
    of `prefill` tokens (at most S) up to the shortest prompt, a few calls that each run
    `prefill` positions at once; `generate` and the exported `generate` signature compile it
    (`tf.function(jit_compile=True)` or `jax.jit`).
    """
    penalize = sampler.repetition_penalty != 1.0
    vocab = model.vocab_size

    def loop(buffer, lengths, max_new_tokens, seed, stops):
        batch, total = ops.shape(buffer)[0], ops.shape(buffer)[1]
        rows = batch * num_beams
        tokens = ops.repeat(buffer, num_beams, axis=0)  # (N, S)
        lengths = ops.repeat(lengths, num_beams, axis=0)  # (N,)
        cache = model.init_cache(rows, total)
        if model.cache_is_positional:
            cache = _prefill(model, tokens, cache, ops.min(lengths), prefill)
            start = ops.min(lengths)  # the first position whose logits are needed
        else:
            start = 1  # the recurrent state must not see any row's padding: feed from the start
        in_prompt_position = ops.arange(total)[None, :] < lengths[:, None]  # (N, S)
        seen = (
            ops.any(
                ops.logical_and(
                    ops.one_hot(tokens, vocab, dtype="int32") > 0, in_prompt_position[..., None]
                ),
                axis=1,
            )
            if penalize
            else ops.zeros((rows, 1), "bool")
        )
        # Only the first beam of each row starts alive, so the first step does not pick
        # the same continuation num_beams times.
        scores = ops.where(ops.arange(rows) % num_beams == 0, 0.0, -1e9)
        state = DecodeState(tokens, cache, start, ops.zeros((rows,), "bool"), seen, scores)

        def step(state):
            index = state.index
            previous = ops.slice(state.tokens, (0, index - 1), (rows, 1))
            logits, cache = model(previous, cache=state.cache, cache_index=index - 1)
            state = state._replace(cache=cache)
            logits = ops.cast(logits[:, 0, :], "float32")  # (N, V)
            in_prompt = index < lengths
            prompt_token = ops.slice(state.tokens, (0, index), (rows, 1))[:, 0]
            if num_beams > 1:
                state, choice = _beam_step(sampler, logits, state, in_prompt, batch, num_beams)
            else:
                choice = sampler(logits, seed, index, state.seen if penalize else None)
            new = ops.where(in_prompt, prompt_token, ops.where(state.done, 0, choice))
            seen = state.seen
            if penalize:
                seen = ops.logical_or(seen, ops.one_hot(new, vocab, dtype="int32") > 0)
            stopped = ops.any(new[:, None] == stops[None, :], axis=-1)
            finished = ops.logical_and(
                ops.logical_not(in_prompt),
                ops.logical_or(stopped, index + 1 >= lengths + max_new_tokens),
            )
            return state._replace(
                tokens=ops.slice_update(state.tokens, (0, index), new[:, None]),
                index=index + 1,
                done=ops.logical_or(state.done, finished),
                seen=seen,
            )

        def not_finished(state):
            return ops.logical_and(state.index < total, ops.logical_not(ops.all(state.done)))

        # Keras passes a tuple of loop variables as separate arguments: the state travels
        # as the one element of a tuple.
        [state] = ops.while_loop(not_finished, lambda state: (step(state),), (state,))
        return state.tokens, state.scores

    return loop


def _prefill(model, tokens, cache, shortest, block):
    """The cache filled with `tokens` (N, S) from position 0 up to `shortest`, `block` positions
    a call (one static shape to compile). The last block is moved back to end at S, recomputing
    positions already filled; positions past a row's prompt get its padding, which the step
    that reaches them overwrites before any query can see them."""
    rows, total = ops.shape(tokens)[0], ops.shape(tokens)[1]
    blocks = (shortest + block - 1) // block

    def fill(i, cache):
        begin = ops.minimum(i * block, total - block)
        _, cache = model(ops.slice(tokens, (0, begin), (rows, block)), cache=cache, cache_index=begin)
        return i + 1, cache

    _, cache = ops.while_loop(lambda i, cache: i < blocks, fill, (0, cache))
    return cache


def _beam_step(sampler, logits, state, in_prompt, batch, beams):
    """One step of beam search over N = B * K rows: the reordered state and each row's token."""
    rows, vocab = ops.shape(logits)
    log_probs = ops.log_softmax(sampler.process(logits, state.seen), axis=-1)  # (N, V)
    # A finished hypothesis keeps its score and only "extends" with padding.
    finished_row = ops.where(ops.arange(vocab)[None, :] == 0, 0.0, -1e9)
    log_probs = ops.where(state.done[:, None], finished_row, log_probs)
    candidates = ops.reshape(state.scores[:, None] + log_probs, (batch, beams * vocab))
    best_scores, best = ops.top_k(candidates, k=beams)  # (B, K)
    source = best // vocab
    choice = ops.reshape(best % vocab, (rows,))
    prompt = ops.reshape(in_prompt, (batch, beams))[:, :1]  # the same for every beam of a row
    source = ops.where(prompt, ops.arange(beams)[None, :], source)
    scores = ops.where(prompt, ops.reshape(state.scores, (batch, beams)), best_scores)
    order = ops.reshape(ops.arange(batch)[:, None] * beams + source, (rows,))
    reordered = DecodeState(
        tokens=ops.take(state.tokens, order, axis=0),
        cache=[ops.take(c, order, axis=0) for c in state.cache],
        index=state.index,
        done=ops.take(state.done, order, axis=0),
        seen=ops.take(state.seen, order, axis=0),
        scores=ops.reshape(scores, (rows,)),
    )
    return reordered, ops.cast(choice, "int32")


def _compile(model, loop):
    """`loop` compiled for the current backend: XLA on TensorFlow, jax.jit on JAX."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(loop, jit_compile=True)
    if backend == "jax":
        import jax

        @jax.jit
        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return loop(*args)

        return lambda *args: stateless([v.value for v in model.variables], *args)
    return loop


def _to_bytes(tokenizer, ids):
    text = tokenizer.detokenize(np.asarray(ids, "int32"))
    if hasattr(text, "numpy"):
        text = text.numpy()
    return text if isinstance(text, bytes) else str(text).encode("utf-8")


def _to_text(tokenizer, ids):
    return _to_bytes(tokenizer, ids).decode("utf-8", errors="replace") if ids else ""
