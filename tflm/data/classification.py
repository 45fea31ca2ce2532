"""Labelled text (CSV, TSV, JSONL) -> padded batches for a `Classifier`."""

import csv
import json
import os

import tensorflow as tf

from tflm.data.sources import resolve_files
from tflm.tokenizers import tokenize_batch

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def read_labelled(path, text_column, label_column):
    """`(texts, labels)` from a CSV/TSV (with a header row) or JSON-lines file.

    Every row needs a text (a string; it may be empty) and a label (a string or a number,
    not empty). A row that lacks either, has more fields than the header, or is not a
    JSON object is a `ValueError` naming the file and line: it never becomes the text or
    the class "None". Blank lines are skipped.
    """
    files = resolve_files(path)
    if len(files) != 1:
        raise ValueError(
            f"{os.fspath(path)!r} names {len(files)} files; labelled data is one file."
        )
    [path] = files
    kind = FORMATS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise ValueError(f"{path}: unknown format; expected one of {sorted(FORMATS)}.")
    with open(path, encoding="utf-8", newline="") as f:
        if kind == "jsonl":
            rows = _json_lines(f, path)
            columns = set().union(*(row.keys() for _, row in rows))
        else:
            rows, columns = _delimited_rows(f, path, kind)
    for column in (text_column, label_column):
        if column not in columns:
            raise ValueError(f"{path}: no column {column!r}; the columns are {sorted(columns)}.")
    if not rows:
        raise ValueError(f"{path}: no rows.")
    pairs = [_text_and_label(row.get(text_column), row.get(label_column), text_column, label_column,
                             f"{path}, line {line}") for line, row in rows]
    return [text for text, _ in pairs], [label for _, label in pairs]


def _text_and_label(text, label, text_column, label_column, where):
    """`(text, label string)` of one row, checked: `where` names the row in errors."""
    if text is None:
        raise ValueError(f"{where}: no text in column {text_column!r}.")
    if not isinstance(text, str):
        raise ValueError(f"{where}: the text ({text_column!r}) is not a string: {text!r:.40}")
    if label is None or label == "":
        raise ValueError(f"{where}: no label in column {label_column!r}.")
    if not isinstance(label, (str, int, float)):
        raise ValueError(
            f"{where}: the label ({label_column!r}) is not a string or a number: {label!r:.40}"
        )
    return text, str(label)


def _json_lines(f, path):
    """`[(line number, object)]` of a JSON-lines file."""
    rows = []
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}, line {number}: invalid JSON ({error.msg}, column {error.colno})."
            ) from None
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}, line {number}: a JSON {type(row).__name__}; each line is an object "
                'such as {"text": "...", "label": "..."}.'
            )
        rows.append((number, row))
    return rows


def _delimited_rows(f, path, kind):
    """`([(line number, {column: value})], columns)` of a CSV or TSV file with a header row.

    A short row lacks its last columns (an error later names the one needed); a long one
    is an error here: an unquoted comma (or a tab) in a text shifts the label.
    """
    reader = csv.reader(
        f, delimiter="\t" if kind == "tsv" else ",",
        quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL,
    )
    header = next(reader, [])
    rows, start = [], reader.line_num + 1
    for fields in reader:
        if len(fields) > len(header) and any(fields[len(header):]):
            advice = "quote a text with a comma" if kind == "csv" else "a text may not hold a tab"
            raise ValueError(
                f"{path}, line {start}: {len(fields)} fields, but the header names "
                f"{len(header)}; {advice}."
            )
        if fields:  # blank lines are skipped, as csv.DictReader does
            rows.append((start, dict(zip(header, fields))))
        start = reader.line_num + 1  # a quoted field may span lines
    return rows, set(header)


def encode_labels(labels, label_names=None, path="the data"):
    """Label strings -> class indices, and the label names (sorted when not given)."""
    if label_names is None:
        values = sorted(set(labels))
        # numeric labels sort as numbers ("2" before "10")
        if all(v.lstrip("-").isdigit() for v in values):
            values = sorted(values, key=int)
        label_names = values
    label_names = [str(name) for name in label_names]
    index = {name: i for i, name in enumerate(label_names)}
    for row, label in enumerate(labels):
        if label not in index:
            raise ValueError(
                f"{path}, row {row + 1}: unknown label {label!r}; the labels are {label_names}."
            )
    return [index[label] for label in labels], label_names


def encode_texts(texts, tokenizer, seq_len, pad_to_multiple_of=1):
    """Strings (B,) -> `{"token_ids", "padding_mask"}` (B, T) for an `Encoder`: each text
    tokenized, cut to fit `seq_len`, wrapped in the tokenizer's bos/eos when it has them
    ([CLS] ... [SEP] for WordPiece) and padded to the longest in the batch, rounded up to
    `pad_to_multiple_of` (few distinct lengths, so XLA compiles few shapes). Graph-safe:
    the same function serves `classification_dataset` and exported `classify` signatures.
    """
    body = _body_length(tokenizer, seq_len)
    ids = tokenize_batch(tokenizer, texts)[:, :body]

    def column(token_id):  # (B, 1) of one id, ragged to concatenate with the texts
        return tf.RaggedTensor.from_tensor(tf.fill([ids.nrows(), 1], tf.constant(token_id, tf.int32)))

    if tokenizer.bos_token_id is not None:
        ids = tf.concat([column(tokenizer.bos_token_id), ids], axis=1)
    if tokenizer.eos_token_id is not None:
        ids = tf.concat([ids, column(tokenizer.eos_token_id)], axis=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    longest = tf.reduce_max(ids.row_lengths())
    length = tf.minimum(-(-longest // pad_to_multiple_of) * pad_to_multiple_of, seq_len)
    shape = tf.stack([ids.nrows(), tf.cast(length, tf.int64)])
    return {"token_ids": ids.to_tensor(pad, shape=shape),
            "padding_mask": tf.ones_like(ids, tf.bool).to_tensor(False, shape=shape)}


def _body_length(tokenizer, seq_len):
    body = seq_len - (tokenizer.bos_token_id is not None) - (tokenizer.eos_token_id is not None)
    if body < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room for text.")
    return body


BUCKET_WINDOW = 64  # batches sorted together by `bucket_by_length`


def _sort_by_length(texts, labels):
    order = tf.argsort(tf.strings.length(texts), stable=True)  # characters: no second tokenization
    return tf.gather(texts, order), tf.gather(labels, order)


def classification_dataset(
    source,
    tokenizer,
    text_column="text",
    label_column="label",
    label_names=None,
    seq_len=128,
    batch_size=32,
    shuffle=True,
    seed=0,
    shuffle_buffer=100_000,
    pad_to_multiple_of=1,
    bucket_by_length=False,
):
    """Batches `({"token_ids", "padding_mask"}, label)` from a CSV, TSV or JSONL file, or
    from a `(texts, labels)` pair of lists.

    Texts are tokenized, wrapped in the tokenizer's bos/eos when it has them ([CLS] ...
    [SEP] for WordPiece), cut to `seq_len` and padded per batch to the batch's longest
    text, rounded up to `pad_to_multiple_of` (dynamic padding; a multiple of 8 or 16 keeps
    the shapes XLA compiles few). With `bucket_by_length`, each batch holds texts of similar
    length, so short texts do not pay for long ones: each window of 64 batches is sorted by
    length, cut into batches, and the batches are shuffled (Hugging Face's
    `group_by_length`). The dataset's `label_names` attribute lists the class names,
    index by index, as `keras.utils.text_dataset_from_directory` does.
    """
    if isinstance(source, tuple):
        texts, labels, path = list(source[0]), [str(label) for label in source[1]], "the data"
    else:
        (texts, labels), path = read_labelled(source, text_column, label_column), source
    label_ids, label_names = encode_labels(labels, label_names, path)
    _body_length(tokenizer, seq_len)  # fail before building the pipeline

    ds = tf.data.Dataset.from_tensor_slices((texts, tf.constant(label_ids, tf.int32)))
    if shuffle:
        ds = ds.shuffle(min(shuffle_buffer, len(texts)), seed=seed, reshuffle_each_iteration=True)
    if bucket_by_length:
        ds = ds.batch(batch_size * BUCKET_WINDOW).map(_sort_by_length).unbatch()
        ds = ds.batch(batch_size)
        if shuffle:
            ds = ds.shuffle(BUCKET_WINDOW, seed=seed, reshuffle_each_iteration=True)
    else:
        ds = ds.batch(batch_size)
    ds = ds.map(
        lambda texts, labels: (encode_texts(texts, tokenizer, seq_len, pad_to_multiple_of), labels),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    ).prefetch(tf.data.AUTOTUNE)
    ds.label_names = label_names
    return ds


def text_batches(data, labels=None, *, tokenizer, seq_len, batch_size=32, shuffle=False,
                 seed=None, pad_to_multiple_of=16):
    """Texts (a list or array of strings), with their `labels` (class ids) or not, or a
    `tf.data.Dataset` of texts or of `(text, label[, weight])`, batched or not -> batches
    of `{"token_ids", "padding_mask"}` (and the rest of each element), as a `Classifier`'s
    `predict`, `fit` and `evaluate` take them. Each batch is padded to its longest text,
    rounded up to `pad_to_multiple_of` (few shapes for XLA to compile)."""
    if isinstance(data, tf.data.Dataset):
        if labels is not None:
            raise ValueError("A dataset holds its own labels: give (text, label) elements, "
                             "not a second argument.")
        ds = data
        texts_spec = tf.nest.flatten(ds.element_spec)[0]
        if texts_spec.shape.rank == 0:  # one text an element: batch them
            ds = ds.batch(batch_size)
    else:
        texts = tf.reshape(tf.convert_to_tensor(data, tf.string), [-1])  # a str, a list, ...
        if labels is None:
            ds = tf.data.Dataset.from_tensor_slices(texts)
        else:
            ds = tf.data.Dataset.from_tensor_slices((texts, tf.constant(labels, tf.int32)))
        if shuffle:
            ds = ds.shuffle(ds.cardinality(), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
    _body_length(tokenizer, seq_len)  # fail before building the pipeline

    def encode(texts, *rest):
        inputs = encode_texts(texts, tokenizer, seq_len, pad_to_multiple_of)
        return (inputs, *rest) if rest else inputs

    return ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
