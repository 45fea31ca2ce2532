"""Pipelines for language-model training: packed next-token blocks and masked-LM batches."""

import keras_hub
import tensorflow as tf

from tflm.data.sources import token_stream
from tflm.tokenizers import check_vocabulary_matches

SUBSETS = ("training", "validation", "both")


def _check_model(model, tokenizer, seq_len):
    if model is None:
        return
    check_vocabulary_matches(tokenizer, model.vocab_size)
    if seq_len > model.max_sequence_length:
        raise ValueError(
            f"seq_len={seq_len} is larger than the model's context of "
            f"{model.max_sequence_length} tokens."
        )


def packed_blocks(tokens, length):
    """`(x, y)` blocks of `length` tokens from a token stream, `y` shifted by one.

    Consecutive blocks share one token: the target of a block's last position is the
    first token of the next block, so every token after the first of the stream is a
    target exactly once (up to the incomplete tail): ⌊(N - 1) / length⌋ blocks.
    """
    chunks = tokens.batch(length)  # the last chunk may be short; it only lends a target

    def step(state, chunk):
        started, previous = state
        y = tf.concat([previous[1:], chunk[:1]], axis=0)
        return (True, chunk), (started, previous, y)

    initial = (tf.constant(False), tf.zeros([length], tf.int32))
    pairs = chunks.scan(initial, step).filter(lambda started, x, y: started)
    return pairs.map(lambda started, x, y: (tf.ensure_shape(x, [length]), tf.ensure_shape(y, [length])))


def count_tokens(tokens):
    return int(tokens.batch(1 << 16).reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.size(b, tf.int64)))


def lm_dataset(
    source,
    tokenizer,
    seq_len,
    batch_size,
    validation_split=None,
    subset="training",
    shuffle=True,
    shuffle_buffer=10_000,
    seed=0,
    errors="strict",
    model=None,
):
    """Next-token batches `(x, y)` of shape (batch_size, seq_len), `y` = `x` shifted by one.

    Args:
        source: a path, a glob of files, a list of strings (documents) or a
            `tf.data.Dataset` of strings. Files stream line by line.
        tokenizer: a tflm tokenizer; documents are joined with its EOS token (when it has one).
        seq_len: tokens per example; blocks are packed end to end, with no padding.
        validation_split: fraction of blocks held out for validation: the *last*
            blocks of the stream (a contiguous tail, as nanoGPT's split), counted in one
            streaming pass over the corpus.
        subset: "training", "validation" or "both" (a `(train, validation)` pair), as in
            `keras.utils.text_dataset_from_directory`.
        shuffle, shuffle_buffer, seed: training blocks are shuffled, deterministically
            for a given seed; validation blocks are not.
        errors: "strict" (invalid UTF-8 is an error naming the file and byte offset) or
            "replace" (invalid bytes become U+FFFD).
        model: when given, fail fast if `seq_len` exceeds its context or the tokenizer's
            vocabulary does not match its `vocab_size`.

    Batches are full (`drop_remainder=True`) and prefetched.
    """
    if subset not in SUBSETS:
        raise ValueError(f"Unknown subset {subset!r}; expected one of {SUBSETS}.")
    if subset != "training" and not validation_split:
        raise ValueError(f"subset={subset!r} needs a validation_split.")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be between 0 and 1; got {validation_split}.")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be positive; got {seq_len}, {batch_size}.")
    _check_model(model, tokenizer, seq_len)

    tokens = token_stream(source, tokenizer, errors)
    blocks = packed_blocks(tokens, seq_len)
    if model is not None:
        blocks = blocks.map(lambda x, y: _checked_ids((x, y), model.vocab_size))

    if validation_split:
        total = count_tokens(tokens)
        num_blocks = max(total - 1, 0) // seq_len
        num_validation = max(1, int(num_blocks * validation_split))
        num_train = num_blocks - num_validation
        splits = {
            "training": _batched(blocks.take(num_train), num_train, batch_size, seq_len, "training",
                                 shuffle, shuffle_buffer, seed),
            "validation": _batched(blocks.skip(num_train).cache(), num_validation, batch_size,
                                   seq_len, "validation", False, 0, seed),
        }
    else:
        num_blocks = None if isinstance(source, tf.data.Dataset) else _count_at_least(blocks, batch_size)
        splits = {"training": _batched(blocks, num_blocks, batch_size, seq_len, "training",
                                       shuffle, shuffle_buffer, seed)}
    if subset == "both":
        return splits["training"], splits["validation"]
    return splits[subset]


def _checked_ids(block, vocab_size):
    """`block` (x, y), after checking that its ids fit the model's vocabulary."""
    for ids in block:
        tf.debugging.assert_less(
            ids, vocab_size, message=f"a token id at or above the model vocabulary size {vocab_size}"
        )
    return block


def _count_at_least(blocks, n):
    """How many blocks there are, counting no further than `n` (enough to know a batch exists)."""
    return int(blocks.take(n).reduce(0, lambda count, _: count + 1))


def _batched(blocks, num_blocks, batch_size, seq_len, name, shuffle, shuffle_buffer, seed):
    if num_blocks is not None and num_blocks < batch_size:
        raise ValueError(
            f"The {name} data yields {num_blocks} block(s) of {seq_len} tokens, fewer than "
            f"one batch of {batch_size}: use more text, a smaller seq_len or a smaller batch."
        )
    if shuffle:
        blocks = blocks.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return blocks.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def mlm_dataset(
    source,
    tokenizer,
    seq_len,
    batch_size,
    mask_rate=0.15,
    max_predictions=None,
    shuffle=True,
    shuffle_buffer=10_000,
    seed=0,
    errors="strict",
):
    """Masked-LM batches for an `Encoder` + `MaskedLM`, BERT's recipe.

    Text is packed into blocks of `seq_len - 2` tokens wrapped in the tokenizer's bos/eos
    ([CLS] ... [SEP]); `mask_rate` of the tokens are chosen, and of those 80% become
    [MASK], 10% a random token and 10% stay (keras-hub's `MaskedLMMaskGenerator`).
    Yields `(inputs, labels, sample_weight)`: inputs hold `token_ids`, `padding_mask`
    and `mask_positions` (B, max_predictions); labels are the original tokens there.
    """
    for name in ("bos_token", "eos_token", "mask_token"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"mlm_dataset needs a tokenizer with a {name}.")
    max_predictions = max_predictions or max(1, round(seq_len * mask_rate * 1.25))
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=tokenizer.vocabulary_size(),
        mask_selection_rate=mask_rate,
        mask_token_id=tokenizer.mask_token_id,
        mask_selection_length=max_predictions,
        unselectable_token_ids=[tokenizer.bos_token_id, tokenizer.eos_token_id],
        mask_token_rate=0.8,
        random_token_rate=0.1,
    )
    body = seq_len - 2
    tokens = token_stream(source, tokenizer, errors).filter(
        lambda t: t != tokenizer.eos_token_id  # documents are separated by blocks here
    )
    blocks = tokens.batch(body, drop_remainder=True)
    if _count_at_least(blocks, batch_size) < batch_size:
        raise ValueError(f"The corpus yields fewer than {batch_size} blocks of {seq_len} tokens.")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    blocks = blocks.map(lambda b: tf.concat([[bos], b, [eos]], 0))
    if shuffle:
        blocks = blocks.shuffle(shuffle_buffer, seed=seed)
    tf.random.set_seed(seed)  # the generator draws from TensorFlow's global seed

    def mask(batch):
        masked = masker(batch)
        inputs = {
            "token_ids": masked["token_ids"],
            "padding_mask": tf.ones_like(batch, tf.bool),
            "mask_positions": masked["mask_positions"],
        }
        return inputs, masked["mask_ids"], masked["mask_weights"]

    batches = blocks.batch(batch_size, drop_remainder=True).map(mask)
    return batches.prefetch(tf.data.AUTOTUNE)
