"""Pipelines for language-model training: packed next-token blocks and masked-LM batches."""

import os
import time

import keras_hub
import numpy as np
import tensorflow as tf

from tflm.data.sources import token_stream
from tflm.models.attached_tokenizer import check_tokenizer

SUBSETS = ("training", "validation", "both")


def _check_model(model, tokenizer, seq_len):
    if model is None:
        return
    check_tokenizer(tokenizer, model.vocab_size)
    if seq_len > model.max_sequence_length:
        raise ValueError(
            f"seq_len={seq_len} is larger than the model's context of "
            f"{model.max_sequence_length} tokens."
        )


def lm_dataset(
    source,
    tokenizer,
    seq_len,
    batch_size,
    validation_split=None,
    subset="training",
    shuffle=True,
    seed=0,
    errors="strict",
    model=None,
    repeat=False,
    start_batch=0,
    progress=True,
):
    """Next-token batches `(x, y)` of shape (batch_size, seq_len), `y` = `x` shifted by one.

    Args:
        source: a path, a glob of files, a list of strings (documents) or a finite
            `tf.data.Dataset` of strings. Files stream line by line.
        tokenizer: a tflm tokenizer; documents are joined with its EOS token (when it has one).
        seq_len: tokens per example; blocks are packed end to end, with no padding, and
            consecutive blocks share one token (the target of a block's last position is
            the first token of the next), so N tokens give ⌊(N - 1) / seq_len⌋ blocks.
        validation_split: fraction of blocks held out for validation: the *last*
            blocks of the stream (a contiguous tail, as nanoGPT's split).
        subset: "training", "validation" or "both" (a `(train, validation)` pair), as in
            `keras.utils.text_dataset_from_directory`.
        shuffle, seed: training blocks come in a new random order each epoch (a full
            permutation, the same for the same seed); validation blocks are in order.
        errors: "strict" (invalid UTF-8 is an error naming the file and byte offset) or
            "replace" (invalid bytes become U+FFFD).
        model: when given, fail fast if `seq_len` exceeds its context or a token id does
            not fit its vocabulary.
        repeat, start_batch: training data as an endless stream of epochs that starts at
            batch `start_batch`. Batch `b` of this stream is always the same, which is
            what lets a training run resume at the exact batch it stopped at.
        progress: when tokenizing takes more than a few seconds, print how far it got
            every few seconds (False: never).

    The corpus is tokenized once and held in memory as int32 ids (4 bytes per token):
    any batch is then a gather, so resuming costs nothing and no shuffle buffer is
    needed. Batches are full (`drop_remainder=True`) and prefetched.
    """
    if subset not in SUBSETS:
        raise ValueError(f"Unknown subset {subset!r}; expected one of {SUBSETS}.")
    if subset != "training" and not validation_split:
        raise ValueError(f"subset={subset!r} needs a validation_split.")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be between 0 and 1; got {validation_split}.")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be positive; got {seq_len}, {batch_size}.")
    if start_batch < 0:
        raise ValueError(f"start_batch must be at least 0; got {start_batch}.")
    _check_model(model, tokenizer, seq_len)

    ids = token_ids(source, tokenizer, errors, progress)
    if model is not None and ids.size and ids.max() >= model.vocab_size:
        raise ValueError(
            f"The tokenizer gave the id {ids.max()}, at or above the model vocabulary size "
            f"{model.vocab_size}."
        )
    num_blocks = max(len(ids) - 1, 0) // seq_len
    num_validation = max(1, int(num_blocks * validation_split)) if validation_split else 0
    num_train = num_blocks - num_validation
    ids = tf.constant(ids)
    splits = {
        "training": _batches(ids, seq_len, 0, num_train, batch_size, "training",
                             shuffle, seed, repeat, start_batch),
    }
    if validation_split:
        splits["validation"] = _batches(ids, seq_len, num_train, num_validation, batch_size,
                                        "validation", False, seed, False, 0)
    if subset == "both":
        return splits["training"], splits["validation"]
    return splits[subset]


# Progress lines start after this many seconds of tokenizing, and come this often.
PROGRESS_AFTER_SECONDS = 3.0
PROGRESS_EVERY_SECONDS = 5.0


def token_ids(source, tokenizer, errors="strict", progress=True):
    """The whole token stream of `source` (see `token_stream`) as one int32 numpy array.

    With `progress`, a tokenization that takes more than a few seconds prints the tokens
    done so far every few seconds, and the total at the end."""
    chunks = [np.zeros([0], np.int32)]
    start = last = time.monotonic()
    count, shown = 0, False
    for chunk in token_stream(source, tokenizer, errors).batch(1 << 16).as_numpy_iterator():
        chunks.append(chunk)
        count += len(chunk)
        now = time.monotonic()
        if progress and now - start >= PROGRESS_AFTER_SECONDS and (
                not shown or now - last >= PROGRESS_EVERY_SECONDS):
            print(f"Tokenizing {_name(source)}: {count:,} tokens so far ({now - start:.0f} s)",
                  flush=True)
            shown, last = True, now
    if shown:
        print(f"Tokenized {_name(source)}: {count:,} tokens in {time.monotonic() - start:.0f} s.",
              flush=True)
    return np.concatenate(chunks)


def _name(source):
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "a dataset" if isinstance(source, tf.data.Dataset) else f"{len(source)} documents"


def _batches(ids, seq_len, first, count, batch_size, name, shuffle, seed, repeat, start_batch):
    """Batches of the blocks `first .. first + count - 1`; batch `b` is a pure function of
    `b` and the epoch seed, so a stream can start anywhere."""
    batches_per_epoch = count // batch_size
    if batches_per_epoch == 0:
        raise ValueError(
            f"The {name} data yields {count} block(s) of {seq_len} tokens, fewer than "
            f"one batch of {batch_size}: use more text, a smaller seq_len or a smaller batch."
        )
    offsets = tf.range(seq_len + 1, dtype=tf.int64)

    def batch_at(b, epoch_seed):
        rows = (b % batches_per_epoch) * batch_size + tf.range(batch_size, dtype=tf.int64)
        if shuffle:  # a stateless permutation of all the blocks, new each epoch
            rows = tf.random.experimental.index_shuffle(
                rows, tf.stack([tf.constant(seed, tf.int64), epoch_seed]), count - 1
            )
        tokens = tf.gather(ids, (first + rows)[:, None] * seq_len + offsets)  # (B, L + 1)
        return tokens[:, :-1], tokens[:, 1:]

    if repeat:  # epoch e is the e-th permutation, wherever the stream starts
        batches = tf.data.Dataset.range(start_batch, 2**62)
        batches = batches.map(lambda b: batch_at(b, b // batches_per_epoch))
    else:  # each pass over the dataset (each Keras epoch) draws the next epoch seed
        epoch_seeds = tf.data.Dataset.random(seed, rerandomize_each_iteration=True).take(1)
        batches = epoch_seeds.flat_map(
            lambda epoch_seed: tf.data.Dataset.range(start_batch, batches_per_epoch).map(
                lambda b: batch_at(b, epoch_seed)
            )
        )
        # flat_map hides the length, which Keras needs to know an epoch ended as planned
        batches = batches.apply(
            tf.data.experimental.assert_cardinality(max(batches_per_epoch - start_batch, 0))
        )
    return batches.prefetch(tf.data.AUTOTUNE)


def _count_at_least(blocks, n):
    """How many blocks there are, counting no further than `n` (enough to know a batch exists)."""
    return int(blocks.take(n).reduce(0, lambda count, _: count + 1))


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
