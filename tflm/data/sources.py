"""Text sources -> a tf.data stream of token ids, read lazily and checked up front."""

import codecs
import glob
import os
from pathlib import Path

import tensorflow as tf

from tflm.tokenizers import tokenize_batch

ERRORS = ("strict", "replace")
_CHUNK = 1 << 20
_PIECES_PER_CALL = 256  # lines (or documents) tokenized per tokenizer call


def resolve_files(pattern):
    """The files a path or glob names, in sorted order; an error when there are none.

    A directory is an error rather than read whole: it may hold files that are not text
    (a .DS_Store, a checkpoint), so the caller names its files with a glob (DIR/*.txt).
    """
    pattern = os.fspath(pattern)
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not files:
        raise FileNotFoundError(f"No file matches {pattern!r}.")
    for path in files:
        if os.path.isdir(path):
            raise IsADirectoryError(
                f"{path!r} is a directory; pass a file or a glob of its files, such as "
                f"{os.path.join(path, '*.txt')!r}."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Corpus file not found: {path!r}.")
    return files


def check_utf8(path):
    """Stream `path` once; raise naming the file and byte offset of the first invalid byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            # Bytes of a character cut by the last chunk wait in the decoder; an error's
            # position counts from the first of them.
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}: invalid UTF-8 at byte offset {offset + error.start - pending}. "
                    "Pass errors='replace' to replace invalid bytes with U+FFFD."
                ) from None
            if not chunk:
                return
            offset += len(chunk)


def text_pieces(source, errors="strict"):
    """A dataset of `(text, is_last_piece_of_document)` for any supported source.

    A file is one document, read line by line (never whole); a string in a list or
    dataset is one document.
    """
    if errors not in ERRORS:
        raise ValueError(f"Unknown errors={errors!r}; expected one of {ERRORS}.")
    if isinstance(source, tf.data.Dataset):
        pieces = source.map(lambda text: (text, True))
    elif isinstance(source, (list, tuple)):
        if not all(isinstance(text, str) for text in source):
            raise TypeError("A list source must hold strings (documents).")
        pieces = tf.data.Dataset.from_tensor_slices(
            (tf.constant(list(source), tf.string), tf.ones([len(source)], tf.bool))
        )
    elif isinstance(source, (str, Path)):
        files = resolve_files(source)
        if errors == "strict":
            for path in files:
                check_utf8(path)
        pieces = tf.data.Dataset.from_tensor_slices(files).flat_map(_file_lines)
    else:
        raise TypeError(
            "A source is a path, a glob, a list of strings or a tf.data.Dataset of strings; "
            f"got {type(source).__name__}."
        )
    if errors == "replace":
        pieces = pieces.map(
            lambda text, end: (
                tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"),
                end,
            )
        )
    return pieces


def _file_lines(path):
    """A file's lines with their newlines, then an empty piece that marks the document's end."""
    lines = tf.data.TextLineDataset(path).map(lambda line: (line + "\n", False))
    return lines.concatenate(tf.data.Dataset.from_tensors((tf.constant(""), True)))


def token_stream(source, tokenizer, errors="strict"):
    """A dataset of int32 token ids, one element a token: documents, each followed by EOS.

    The stream starts with EOS too when the tokenizer has one, so the first token of every
    document is predicted from the same context as after a document boundary.
    """
    eos = tokenizer.eos_token_id

    def tokenize(texts, document_ends):
        ids = tokenize_batch(tokenizer, texts)  # (n, None): one call for many pieces is much faster
        if eos is not None:  # an EOS after each piece that ends a document
            ends = tf.cast(document_ends, tf.int64)
            separators = tf.RaggedTensor.from_row_lengths(
                tf.fill([tf.reduce_sum(ends)], tf.constant(eos, tf.int32)), ends
            )
            ids = tf.concat([ids, separators], axis=1)
        return ids.flat_values

    pieces = text_pieces(source, errors).batch(_PIECES_PER_CALL)
    tokens = pieces.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if eos is not None:
        tokens = tf.data.Dataset.from_tensors(tf.constant([eos], tf.int32)).concatenate(tokens)
    return tokens.unbatch()
