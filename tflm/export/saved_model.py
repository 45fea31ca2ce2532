"""Versioned SavedModels for TF Serving, with tokenization and decoding inside the graph.

    saved_models/NAME/1/    saved_model.pb, variables/, assets/
    saved_models/NAME/2/    the next export; TF Serving serves the highest version

Signatures (B is the batch; every input has it, so TF Serving's row format works):

GPT
    generate         prompts string [B], max_new_tokens int32 [B], temperature float32 [B],
                     top_k int32 [B], top_p float32 [B], seed int32 [B]
                     -> completions string [B] (the new text only)
                     temperature 0 is greedy; top_k 0 and top_p 1 switch those off.
    serving_default  prompts string [B] -> completions string [B]: greedy, the
                     `max_new_tokens` given at export.
    generate_tokens  the steps of a streamed generation (`tflm serve`'s :generate_stream):
                     prompts string [B], token_ids int32 [B, G] (the ids generated so
                     far, -1 after a row's end), max_new_tokens int32 [B] (the whole
                     budget), steps int32 [B], temperature, top_k, top_p, seed as above
                     -> token_ids int32 [B, steps] (the next ids, -1 after a row's end),
                     text string [B] (their bytes, which may end inside a character),
                     done bool [B] (a stop token came, or max_new_tokens are generated).
                     Calls that feed back what the earlier ones returned produce what
                     one `generate` call does.
    logits           token_ids int32 [B, T] -> logits float32 [B, T, vocab_size];
                     T at most the context, ids below vocab_size
Classifier
    classify = serving_default
                     texts string [B] -> probabilities float32 [B, C], labels string [B]

A prompt longer than the context leaves room for is cut to its last tokens; bad
settings (max_new_tokens outside 1 .. context - 1, top_p outside (0, 1], a negative
top_k or temperature) fail the request with an InvalidArgument error.

Every op in an export is one of core TensorFlow's (tokenizers included), so plain
TensorFlow, its C++ and Java runtimes and stock TF Serving load it: no tflm, no
tensorflow-text. `tflm export --check` proves it for an export (tflm/export/audit.py).

The decode loop is compiled with XLA once for each (batch, length) shape it meets; it
feeds the prompts LENGTH_BUCKET tokens a call, then one token a step.
Batches are padded to a power of two, and lengths round up to a multiple of
LENGTH_BUCKET, so a few shapes cover every request; the export writes one TF Serving
warm-up request for each (assets.extra/tf_serving_warmup_requests), which TF Serving and
`tflm serve` replay at load, so no request waits for a compilation.
"""

import os
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from tflm.data.classification import encode_texts
from tflm.export.audit import WARMUP_FILE
from tflm.generation.decode import LENGTH_BUCKET, MAX_STOP_TOKENS, make_decode_loop
from tflm.generation.samplers import PerRow
from tflm.models import GPT, Classifier
from tflm.tokenizers import tokenize_batch

def saved_model(model, base_path, version=None, max_new_tokens=None, warmup_batch_size=8,
                progress=None):
    """Export `model` (a GPT or Classifier with its tokenizer) as `base_path/<version>/`.

    `version` defaults to the next integer after those present. The SavedModel is written
    into a temporary folder and renamed into place, so a server watching `base_path`
    never sees a half-written version; an existing version is never overwritten.
    `max_new_tokens` is the length of a GPT's `serving_default` completions (default 64,
    or less when the context is shorter). The warm-up requests compile a GPT's decode
    loop for the batch sizes 1, 2, 4, ... up to `warmup_batch_size` (0: no warm-up
    file) and every length; larger batches compile on their first request. `progress`, a
    function of one string (e.g. `print`), hears of each step: tracing each signature,
    writing the SavedModel and the warm-up requests.
    Returns the version's path.
    """
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("Only a model with a tokenizer can be exported: its signatures take text.")
    if warmup_batch_size < 0:
        raise ValueError(f"warmup_batch_size must be 0 or more; got {warmup_batch_size}.")
    if not model.built:  # its weights exist once built; Keras exports only built layers
        model.build({"token_ids": (None, None), "padding_mask": (None, None)}
                    if isinstance(model, Classifier) else (None, None))
    progress = progress or (lambda message: None)
    if isinstance(model, GPT):
        archive = _gpt_archive(model, max_new_tokens, progress)
        warmup = _gpt_warmup(model, warmup_batch_size)
    elif isinstance(model, Classifier):
        archive = _classifier_archive(model, progress)
        warmup = [("classify", {"texts": tf.constant(["warm-up"])})] if warmup_batch_size else []
    else:
        raise TypeError(f"Cannot export a {type(model).__name__}; expected a GPT or a Classifier.")

    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    if version is None:
        versions = [int(p.name) for p in base.iterdir() if p.name.isdigit()]
        version = max(versions, default=0) + 1
    if int(version) < 1:
        raise ValueError(f"A version is a positive integer; got {version}.")
    final = base / str(int(version))
    if final.exists():
        raise FileExistsError(f"{final} exists; a version is never overwritten: choose another.")
    temporary = base / f".tmp-{int(version)}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        progress("Writing the SavedModel")
        archive.write_out(str(temporary), verbose=False)
        if warmup:
            progress(f"Writing {len(warmup)} warm-up requests")
            write_warmup_requests(temporary, warmup)
        temporary.rename(final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def _gpt_archive(model, max_new_tokens, progress):
    context = model.max_sequence_length
    max_new_tokens = min(64, context - 1) if max_new_tokens is None else max_new_tokens
    if not 1 <= max_new_tokens < context:
        raise ValueError(f"max_new_tokens must be between 1 and {context - 1}.")
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    stops = tf.constant(([eos] if eos is not None else []) + [-1] * (MAX_STOP_TOKENS - (eos is not None)),
                        tf.int32)
    prefill = min(LENGTH_BUCKET, context)  # every total length is a multiple of it, or the context

    @tf.function(jit_compile=True)  # one XLA function all signatures call: one compilation a shape
    def decode(buffer, lengths, max_new_tokens, seed, temperature, top_k, top_p):
        loop = make_decode_loop(model, PerRow(temperature, top_k, top_p), prefill)
        return loop(buffer, lengths, max_new_tokens, seed, stops)[0]

    def continue_ids(prompts, generated, max_new_tokens, steps, temperature, top_k, top_p, seed):
        """Up to `steps` more tokens after each prompt and its `generated` ids (ragged), which
        together keep room for `max_new_tokens`: (new ids before a stop token, stopped)."""
        _check_settings(context, max_new_tokens, temperature, top_k, top_p)
        ids = tf.concat([_prompt_ids(tokenizer, prompts, context - max_new_tokens), generated], axis=1)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        ends = lengths + steps
        total = tf.minimum(-(-tf.reduce_max(ends) // LENGTH_BUCKET) * LENGTH_BUCKET, context)
        batch = tf.shape(prompts)[0]
        buffer = ids.to_tensor(0, shape=tf.stack([tf.cast(batch, tf.int64), tf.cast(total, tf.int64)]))
        # Rows copied from the first pad the batch to a power of two (a row's tokens do
        # not depend on the others), so a few batch shapes compile.
        rows = tf.concat([tf.range(batch), tf.zeros([padded_batch(batch) - batch], tf.int32)], 0)
        row_inputs = [buffer, lengths, steps, seed, temperature, top_k, top_p]
        tokens = decode(*[tf.gather(x, rows) for x in row_inputs])[:batch]
        positions = tf.range(total)[None, :]
        new = (positions >= lengths[:, None]) & (positions < ends[:, None])
        stopped = tf.reduce_any(tokens[..., None] == stops[None, None, :], axis=-1) & new
        first_stop = tf.where(tf.reduce_any(stopped, axis=1),
                              tf.argmax(tf.cast(stopped, tf.int32), axis=1, output_type=tf.int32), ends)
        kept = tf.ragged.boolean_mask(tokens, new & (positions < first_stop[:, None]))
        return kept, tf.reduce_any(stopped, axis=1)

    def generate(prompts, max_new_tokens, temperature, top_k, top_p, seed):
        none = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros(tf.shape(prompts), tf.int64))
        kept, _ = continue_ids(prompts, none, max_new_tokens, max_new_tokens, temperature, top_k,
                               top_p, seed)
        return {"completions": tokenizer.detokenize(kept)}

    def generate_tokens(prompts, token_ids, max_new_tokens, steps, temperature, top_k, top_p, seed):
        generated = tf.RaggedTensor.from_tensor(token_ids, padding=-1)
        count = tf.cast(generated.row_lengths(), tf.int32)
        checks = [tf.debugging.assert_positive(steps, message="steps must be at least 1"),
                  tf.debugging.assert_less_equal(count + steps, max_new_tokens,
                                                 message="token_ids and steps exceed max_new_tokens"),
                  *_check_ids(generated.flat_values, model.vocab_size)]
        with tf.control_dependencies(checks):
            generated = tf.identity(generated)
        kept, stopped = continue_ids(prompts, generated, max_new_tokens, steps, temperature, top_k,
                                     top_p, seed)
        count += tf.cast(kept.row_lengths(), tf.int32)
        return {"token_ids": kept.to_tensor(-1), "text": tokenizer.detokenize(kept),
                "done": stopped | (count >= max_new_tokens)}

    def serving_default(prompts):
        batch = tf.shape(prompts)[0]
        return generate(prompts, tf.fill([batch], max_new_tokens), tf.zeros([batch]),
                        tf.zeros([batch], tf.int32), tf.ones([batch]), tf.zeros([batch], tf.int32))

    def logits(token_ids):
        checks = [
            tf.debugging.assert_less_equal(tf.shape(token_ids)[1], context,
                                           message=f"token_ids is longer than the context of {context}"),
            *_check_ids(token_ids, model.vocab_size)]
        with tf.control_dependencies(checks):  # before the embedding's gather fails on its own
            token_ids = tf.identity(token_ids)
        return {"logits": tf.cast(model(token_ids), tf.float32)}

    archive = _archive(model, tokenizer)
    rows = lambda dtype: tf.TensorSpec([None], dtype)  # noqa: E731
    settings = [rows(tf.float32), rows(tf.int32), rows(tf.float32), rows(tf.int32)]
    for name, function, signature in [
        ("serving_default", serving_default, [rows(tf.string)]),
        ("generate", generate, [rows(tf.string), rows(tf.int32), *settings]),
        ("generate_tokens", generate_tokens, [rows(tf.string), tf.TensorSpec([None, None], tf.int32),
                                              rows(tf.int32), rows(tf.int32), *settings]),
        ("logits", logits, [tf.TensorSpec([None, None], tf.int32)]),
    ]:
        progress(f"Tracing the {name} signature")
        archive.add_endpoint(name, function, signature)
    return archive


def padded_batch(batch):
    """The power of two at or above `batch` (an int32 tensor): the batch the decode loop runs."""
    x = batch - 1
    for shift in (1, 2, 4, 8, 16):  # copy the highest set bit into every lower one
        x = tf.bitwise.bitwise_or(x, tf.bitwise.right_shift(x, shift))
    return x + 1


def _gpt_warmup(model, batch_size):
    """One `generate` request a compiled shape: batches 1, 2, 4, ... `batch_size`, and for
    each every total length the decode loop rounds to (LENGTH_BUCKET multiples, the context);
    then one request to each other signature, which TensorFlow prepares on its first call."""
    if not batch_size:
        return []
    context = model.max_sequence_length
    prompt = _warmup_prompt(model.tokenizer)
    totals = sorted({min(t, context) for t in range(LENGTH_BUCKET, context + LENGTH_BUCKET, LENGTH_BUCKET)})
    requests = [("serving_default", {"prompts": tf.constant([prompt])}),
                ("logits", {"token_ids": tf.zeros([1, 1], tf.int32)}),
                ("generate_tokens", {
                    "prompts": tf.constant([prompt]), "token_ids": tf.fill([1, 1], -1),
                    "max_new_tokens": tf.constant([1]), "steps": tf.constant([1]),
                    "temperature": tf.constant([0.0]), "top_k": tf.constant([0]),
                    "top_p": tf.constant([1.0]), "seed": tf.constant([0])})]
    batch = 1
    while batch <= batch_size:
        for total in totals:  # a one-token prompt and total - 1 new tokens end at `total`
            rows = lambda value, dtype: tf.constant([value] * batch, dtype)  # noqa: E731
            requests.append(("generate", {
                "prompts": rows(prompt, tf.string), "max_new_tokens": rows(total - 1, tf.int32),
                "temperature": rows(0.0, tf.float32), "top_k": rows(0, tf.int32),
                "top_p": rows(1.0, tf.float32), "seed": rows(0, tf.int32)}))
        batch *= 2
    return requests


def _warmup_prompt(tokenizer):
    """A text of exactly one token."""
    specials = set(tokenizer.special_tokens_list())
    for token_id in range(tokenizer.vocabulary_size()):
        if tokenizer.id_to_token(token_id) in specials:
            continue
        text = tokenizer.detokenize(tf.constant([token_id])).numpy()
        if tokenize_batch(tokenizer, tf.constant([text])).row_lengths().numpy()[0] == 1:
            return text
    raise ValueError("The tokenizer has no token whose text tokenizes to itself.")


def write_warmup_requests(directory, requests):
    """Write `requests` [(signature, {input: tensor})] as TF Serving's warm-up file: PredictionLog
    records in directory/assets.extra/tf_serving_warmup_requests (TFRecord)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    folder = Path(directory) / "assets.extra"
    folder.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / WARMUP_FILE)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _classifier_archive(model, progress):
    tokenizer = model.tokenizer
    names = model.label_names or [str(i) for i in range(model.num_classes)]
    label_names = tf.constant(names)
    seq_len = model.encoder.max_sequence_length

    def classify(texts):
        logits = model(encode_texts(texts, tokenizer, seq_len))
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return {"probabilities": probabilities,
                "labels": tf.gather(label_names, tf.argmax(probabilities, axis=-1))}

    archive = _archive(model, tokenizer)
    for name in ("serving_default", "classify"):
        progress(f"Tracing the {name} signature")
        archive.add_endpoint(name, classify, [tf.TensorSpec([None], tf.string)])
    return archive


def _archive(model, tokenizer):
    """An ExportArchive holding the model and the tokenizer's tables and vocabulary files."""
    if not tokenizer.built:  # a tokenizer has no weights; Keras exports only built layers
        tokenizer.build(None)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(tokenizer)
    return archive


def _check_settings(context, max_new_tokens, temperature, top_k, top_p):
    tf.debugging.assert_greater_equal(max_new_tokens, 1, message="max_new_tokens must be at least 1")
    tf.debugging.assert_less(max_new_tokens, context,
                             message=f"max_new_tokens must be below the context of {context}")
    tf.debugging.assert_non_negative(temperature, message="temperature must be at least 0")
    tf.debugging.assert_non_negative(top_k, message="top_k must be at least 0")
    tf.debugging.assert_greater(top_p, 0.0, message="top_p must be above 0")
    tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be at most 1")


def _check_ids(token_ids, vocab_size):
    return [tf.debugging.assert_non_negative(token_ids, message="a token id is negative"),
            tf.debugging.assert_less(token_ids, vocab_size,
                                     message=f"a token id is not below the vocabulary size {vocab_size}")]


def _prompt_ids(tokenizer, prompts, room):
    """Ragged (B, None) int32 ids; an empty prompt is the EOS token, and a prompt longer
    than its row's `room` keeps its last `room` tokens."""
    ids = tokenize_batch(tokenizer, prompts)
    if tokenizer.eos_token_id is not None:  # an empty prompt starts a document
        empty = tf.cast(ids.row_lengths() == 0, tf.int64)
        eos = tf.fill([tf.reduce_sum(empty)], tf.constant(tokenizer.eos_token_id, tf.int32))
        ids = tf.concat([ids, tf.RaggedTensor.from_row_lengths(eos, empty)], axis=1)
    tf.debugging.assert_positive(ids.row_lengths(), message="a prompt is empty")
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    kept = tf.minimum(lengths, room)
    starts = tf.cast(ids.row_starts(), tf.int32) + lengths - kept
    return tf.gather(ids.flat_values, tf.ragged.range(starts, starts + kept))
