"""Byte- and character-level tokenizers, written in plain TensorFlow ops (no custom ops).

Both are small enough that their whole vocabulary lives in the config, so they save
and restore with a model without extra files, and export to any TensorFlow runtime.

Shapes in comments: B texts in a batch, T tokens of a text; None, a ragged dimension.
"""

import keras
import keras_hub
import tensorflow as tf

from tflm.tokenizers.base import SpecialTokens


def _as_string_tensor(inputs):
    if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)):
        return inputs
    return tf.convert_to_tensor(inputs, dtype=tf.string)


class _TableTokenizer(SpecialTokens, keras_hub.tokenizers.Tokenizer):
    """Shared by the byte and char tokenizers: a token table for ids -> strings."""

    def _tokens(self):
        """Every token string, indexed by id."""
        raise NotImplementedError

    def get_vocabulary(self):
        return list(self._tokens())

    def vocabulary_size(self):
        return len(self._tokens())

    def id_to_token(self, id):
        tokens = self._tokens()
        if not 0 <= id < len(tokens):
            raise ValueError(f"Token id {id} is outside the vocabulary (0..{len(tokens) - 1}).")
        return tokens[id]

    def token_to_id(self, token):
        try:
            return self._tokens().index(token)
        except ValueError:
            raise ValueError(f"Token {token!r} is not in the vocabulary.") from None

    def detokenize(self, inputs):
        """Ids (T,) -> a string; (B, T) dense or ragged -> (B,) strings. Specials print as themselves."""
        if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)):
            ids = inputs
        else:  # numpy arrays and (possibly ragged) Python lists
            ids = tf.ragged.constant(inputs) if isinstance(inputs, list) else tf.constant(inputs)
        tokens = self._tokens()
        table = tf.constant([t.encode("utf-8") if isinstance(t, str) else t for t in tokens])
        size = len(tokens)
        flat = ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids
        tf.debugging.assert_less(
            tf.cast(flat, tf.int64), tf.constant(size, tf.int64),
            message=f"token id at or above the vocabulary size {size}",
        )
        pieces = tf.gather(table, ids)
        return tf.strings.reduce_join(pieces, axis=-1)


@keras.saving.register_keras_serializable(package="tflm")
class ByteTokenizer(_TableTokenizer):
    """UTF-8 bytes: ids 0-255 are bytes, special tokens follow from 256 on.

    Any text tokenizes (no unknown tokens) and `detokenize(tokenize(text)) == text`.
    Special tokens are only produced by the pipeline (an EOS between documents), never
    parsed out of text, so text cannot inject them.

    Example:
    >>> tokenizer = ByteTokenizer()                       # eos "<|endoftext|>" = 256
    >>> tokenizer("héllo")                                # [104, 195, 169, 108, 108, 111]
    >>> tokenizer.detokenize([104, 105])                  # b"hi"
    """

    def __init__(
        self,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token=None,
        mask_token=None,
        unk_token=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_special_tokens(bos_token, eos_token, pad_token, mask_token, unk_token)

    def _tokens(self):
        return [bytes([b]) for b in range(256)] + self.special_tokens_list()

    def token_to_id(self, token):
        if isinstance(token, str) and token in self.special_tokens_list():
            return 256 + self.special_tokens_list().index(token)
        return super().token_to_id(token)

    def tokenize(self, inputs):
        """A string -> (T,) int32 ids; (B,) strings -> ragged (B, None) ids."""
        inputs = _as_string_tensor(inputs)
        ids = tf.strings.unicode_decode(inputs, "ISO-8859-1")  # one code point per byte
        return ids  # int32


@keras.saving.register_keras_serializable(package="tflm")
class CharTokenizer(_TableTokenizer):
    """One id per Unicode character of a fixed vocabulary, special tokens after it.

    Build the vocabulary from a corpus with `CharTokenizer.train(text)` (tiny Shakespeare
    gives nanoGPT's 65 symbols). A character outside the vocabulary maps to `unk_token`
    when one is set, and is an error otherwise.

    Example:
    >>> tokenizer = CharTokenizer.train("hello world")
    >>> tokenizer("hello")                                # [3, 2, 4, 4, 5]
    """

    def __init__(
        self,
        vocabulary,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        mask_token=None,
        unk_token=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        vocabulary = "".join(vocabulary)
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("A character vocabulary must not repeat characters.")
        self.vocabulary = vocabulary
        self._set_special_tokens(bos_token, eos_token, pad_token, mask_token, unk_token)
        # Built eagerly: a table first made inside a tf.data map could not be reused.
        with tf.init_scope():
            default = -1 if unk_token is None else self.token_to_id(unk_token)
            self._lookup = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(vocabulary)), tf.range(len(vocabulary), dtype=tf.int32)
                ),
                default_value=default,
            )

    @classmethod
    def train(cls, corpus, **special_tokens):
        """The sorted set of characters in `corpus` (a string or an iterable of strings)."""
        characters = set()
        for text in [corpus] if isinstance(corpus, str) else corpus:
            characters.update(text)
        if not characters:
            raise ValueError("Cannot build a character vocabulary from an empty corpus.")
        return cls("".join(sorted(characters)), **special_tokens)

    def _tokens(self):
        return list(self.vocabulary) + self.special_tokens_list()

    def tokenize(self, inputs):
        """A string -> (T,) int32 ids; (B,) strings -> ragged (B, None) ids."""
        characters = tf.strings.unicode_split(_as_string_tensor(inputs), "UTF-8")
        ids = tf.ragged.map_flat_values(self._lookup.lookup, characters)
        flat = ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids
        tf.debugging.assert_non_negative(
            flat, message="a character that is not in the CharTokenizer's vocabulary"
        )
        return ids

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary}
