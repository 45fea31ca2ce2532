"""WordPiece (BERT's scheme) in core TensorFlow ops: one graph for tf.data, eager calls and exports.

Shapes in comments: B texts in a batch; N code points of a batch, C of them changed by
lowercasing or accent stripping, M characters after that; W words, Q characters of all
words with a WORD_START before each (and one at the end); R characters where a word's
later pieces may start; K candidate pieces; S greedy steps; T tokens; None, a ragged
dimension.
"""

import threading
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tflm.tokenizers import bert_text
from tflm.tokenizers.base import SpecialTokens

VOCABULARY_FILE = "vocabulary.txt"  # keras-hub's asset name
PROGRESS_AFTER_SECONDS = 3.0  # a training that takes longer says so

# Marks a word's start in the string of all words: a control character, so never in a word.
WORD_START = "\x01"
WORD_START_CODE = ord(WORD_START)

# Code points need 21 bits; their `bert_text` flags ride above them.
FLAG_UNIT = 1 << 21
SPACE = 32 | bert_text.WHITESPACE * FLAG_UNIT


def _read_vocabulary(path):
    """One token a line, as in BERT's vocab.txt (lines end at "\\n", a trailing "\\r" dropped)."""
    with open(path, encoding="utf-8", newline="") as file:
        lines = file.read().split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _as_string_tensor(inputs):
    if isinstance(inputs, tf.Tensor):
        return inputs
    return tf.convert_to_tensor(inputs, dtype=tf.string)


@keras.saving.register_keras_serializable(package="tflm")
class WordPieceTokenizer(SpecialTokens, keras_hub.tokenizers.Tokenizer):
    """WordPiece from a BERT `vocab.txt` (a path or a list of tokens), or trained here.

    Tokenizes exactly as BERT (Hugging Face's `BertTokenizer`): drop control characters,
    put spaces around CJK ideographs, split on whitespace, strip accents and lowercase,
    split off punctuation, then match the longest vocabulary piece first ("##" marks a
    piece inside a word). A word with no full segmentation, or longer than
    `max_input_chars_per_word` characters, becomes one `unk_token`. There is no
    compatibility normalization: full-width "Ｆｕｌｌ" is not read as "full".

    Special tokens written in the text ("[MASK]") are not parsed as special tokens:
    they tokenize as the characters they are made of, so text cannot inject them
    (`BertTokenizer` does parse them, unless `split_special_tokens=True`).

    `tokenize` and `detokenize` use only core TensorFlow ops (no tensorflow-text), so the
    same tokenizer runs in `tf.data` maps and in exported SavedModels that load in plain
    TensorFlow or TF Serving. BERT's special tokens map to the common names: bos = [CLS],
    eos = [SEP], pad = [PAD], mask = [MASK], unk = [UNK]. The vocabulary is saved inside
    `.keras` archives as a file.

    Args:
        vocabulary: a path to a vocabulary file (one token a line) or a list of tokens.
        lowercase: lowercase the text.
        strip_accents: drop accents (NFD, then combining marks); None: as `lowercase`.
        split_on_cjk: make each CJK ideograph a word of its own.
        suffix_indicator: the prefix of pieces that continue a word.
        max_input_chars_per_word: longer words become `unk_token`.

    Example:
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    ...                                 "the", "qu", "##ick", "fox", "."])
    >>> tokenizer.tokenize("The quick fox.")               # [5, 6, 7, 8, 9]
    >>> tokenizer.tokenize(["the fox", "quick"])           # <tf.RaggedTensor [[5, 8], [6, 7]]>
    >>> tokenizer.detokenize([5, 6, 7, 8])                 # b"the quick fox"
    >>> tokenizer = WordPieceTokenizer("minilm/vocab.txt")  # BERT's own file
    """

    def __init__(
        self,
        vocabulary=None,
        lowercase=True,
        strip_accents=None,
        split_on_cjk=True,
        suffix_indicator="##",
        max_input_chars_per_word=100,
        bos_token="[CLS]",
        eos_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if unk_token is None:
            raise ValueError("WordPiece needs an `unk_token` for words it cannot split.")
        if not suffix_indicator:
            raise ValueError("`suffix_indicator` must be a non-empty string.")
        self._set_special_tokens(bos_token, eos_token, pad_token, mask_token, unk_token)
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.split_on_cjk = split_on_cjk
        self.suffix_indicator = suffix_indicator
        self.max_input_chars_per_word = max_input_chars_per_word
        self.file_assets = [VOCABULARY_FILE]
        self.set_vocabulary(vocabulary)

    # -- vocabulary ---------------------------------------------------------------------

    def set_vocabulary(self, vocabulary):
        """Use `vocabulary` (a file path, a list of tokens, or None for none yet)."""
        if vocabulary is None:
            self.vocabulary = None
            self._token_ids = None
            self._pieces = None
            return
        if isinstance(vocabulary, str):
            vocabulary = _read_vocabulary(vocabulary)
        self.vocabulary = [str(token) for token in vocabulary]
        self._check_special_tokens_in(self.vocabulary, "WordPiece")
        self._token_ids = {token: i for i, token in enumerate(self.vocabulary)}  # last one wins

        # Keys: WORD_START + piece for a word's first piece (every token may start a word,
        # as in the reference), the piece without its suffix indicator for the rest.
        indicator = self.suffix_indicator
        first = {WORD_START + t: i for t, i in self._token_ids.items() if WORD_START not in t}
        rest = {
            t[len(indicator):]: i
            for t, i in self._token_ids.items()
            if t.startswith(indicator) and len(t) > len(indicator) and WORD_START not in t
        }
        self._max_first = max((len(key) - 1 for key in first), default=0)
        self._max_rest = max((len(key) for key in rest), default=0)
        pieces = {**first, **rest}
        # Built eagerly: a table first made inside a tf.data map could not be reused.
        with tf.init_scope():
            self._pieces = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(pieces), tf.string),
                    tf.constant(list(pieces.values()), tf.int32),
                ),
                default_value=-1,
            )
        # For detokenize: a token as it prints first in a text, and after another token.
        suffix = [t.startswith(indicator) and len(t) > len(indicator) for t in self.vocabulary]
        self._print_first = np.array([t.encode("utf-8") for t in self.vocabulary], dtype=object)
        self._print_next = np.array(
            [(t[len(indicator):] if s else " " + t).encode("utf-8")
             for t, s in zip(self.vocabulary, suffix)],
            dtype=object,
        )

    def save_assets(self, dir_path):
        with open(f"{dir_path}/{VOCABULARY_FILE}", "w", encoding="utf-8") as file:
            file.writelines(f"{token}\n" for token in self.vocabulary)

    def load_assets(self, dir_path):
        self.set_vocabulary(f"{dir_path}/{VOCABULARY_FILE}")

    def _check_vocabulary(self):
        if self.vocabulary is None:
            raise ValueError("No vocabulary has been set for this WordPieceTokenizer.")

    def get_vocabulary(self):
        self._check_vocabulary()
        return list(self.vocabulary)

    def vocabulary_size(self):
        self._check_vocabulary()
        return len(self.vocabulary)

    def id_to_token(self, id):
        self._check_vocabulary()
        if not 0 <= id < len(self.vocabulary):
            last = len(self.vocabulary) - 1
            raise ValueError(f"Token id {id} is outside the vocabulary (0..{last}).")
        return self.vocabulary[id]

    def token_to_id(self, token):
        self._check_vocabulary()
        if token not in self._token_ids:
            raise ValueError(f"Token {token!r} is not in the vocabulary.")
        return self._token_ids[token]

    # -- text -> ids ----------------------------------------------------------------------

    def tokenize(self, inputs):
        """A string -> (T,) int32 ids; (B,) strings -> ragged (B, None) int32 ids."""
        self._check_vocabulary()
        texts = _as_string_tensor(inputs)
        if texts.shape.rank == 0:
            return self._tokenize_batch(texts[None])[0]
        if texts.shape.rank != 1:
            raise ValueError(f"Expected a string or a batch (B,) of strings, not {texts.shape}.")
        return self._tokenize_batch(texts)

    def _tokenize_batch(self, texts):
        spaced = tf.strings.join([texts, " "])  # a space after each: no word spans two texts
        decoded = tf.strings.unicode_decode(spaced, "UTF-8", errors="replace")  # (B, None)
        text_splits = tf.cast(decoded.row_splits, tf.int32)
        joined, word_source = self._normalized_words(decoded.flat_values)
        ids, pieces = self._word_pieces(joined)  # (T,) all texts' pieces, (W,) pieces a word
        # Each word belongs to the text its first code point came from.
        word_text = tf.searchsorted(text_splits, word_source, side="right") - 1  # (W,)
        counts = tf.math.unsorted_segment_sum(pieces, word_text, tf.size(texts))  # (B,)
        splits = tf.cast(tf.concat([[0], tf.cumsum(counts)], 0), tf.int64)  # as tf-text's
        return tf.RaggedTensor.from_row_splits(ids, splits, validate=False)  # (B, None)

    def _normalized_words(self, codes):
        """Code points (N,) of all texts -> all words in one sequence (Q,) of code points,
        WORD_START before each word and at the end, and the index (W,) in `codes` of each
        word's first code point."""
        lowercase = self.lowercase
        strip_accents = lowercase if self.strip_accents is None else self.strip_accents
        # Characters travel with their flags: code | flags * FLAG_UNIT.
        flags = _flags(codes, lowercase, strip_accents)  # (N,)
        packed = tf.where(flags & bert_text.WHITESPACE != 0, SPACE, codes | flags * FLAG_UNIT)
        packed = tf.where(flags & (bert_text.REMOVED | bert_text.CHANGED) != 0, -1, packed)
        none = tf.fill(tf.shape(codes), -1)
        slots = tf.stack([packed] + [none] * (bert_text.MAX_MAPPED - 1), 1)  # (N, 3)

        # Lowercasing and accents change a few code points into 1-3 characters.
        if lowercase or strip_accents:
            changed = tf.where(flags & bert_text.CHANGED != 0)  # (C, 1)
            code = tf.gather_nd(codes, changed)  # (C,)
            keys, values = _mapping(lowercase, strip_accents)
            into = tf.gather(values, tf.searchsorted(keys, code))  # (C, 3) packed
            if strip_accents:  # Hangul syllables: Unicode's arithmetic decomposition into jamo
                syllable = code - bert_text.HANGUL_FIRST  # (jamo have no flags)
                leading, vowel, trailing = syllable // 588, syllable % 588 // 28, syllable % 28
                jamo = tf.stack([0x1100 + leading, 0x1161 + vowel, 0x11A7 + trailing], 1)
                jamo = tf.where(jamo == 0x11A7, -1, jamo)  # no trailing consonant
                hangul = (syllable >= 0) & (code <= bert_text.HANGUL_LAST)
                into = tf.where(hangul[:, None], jamo, into)
            slots = tf.tensor_scatter_nd_update(slots, changed, into)
        where = tf.where(slots >= 0)
        packed = tf.gather_nd(slots, where)  # (M,)
        characters = packed % FLAG_UNIT
        flags = packed // FLAG_UNIT

        # Words: split at whitespace; punctuation (and CJK ideographs) stand alone. Mapping
        # keeps a code point's CJK flag, so the flags after it serve for both.
        gap = flags & bert_text.WHITESPACE != 0
        alone_flags = bert_text.PUNCTUATION | (bert_text.CJK if self.split_on_cjk else 0)
        alone = flags & alone_flags != 0
        after_break = tf.concat([[True], gap | alone], 0)[:-1]
        starts = (after_break | alone) & ~gap
        # WORD_START before each word's first character, whitespace dropped.
        slots = tf.stack([tf.where(starts, WORD_START_CODE, -1), tf.where(gap, -1, characters)], 1)
        joined = tf.concat([tf.gather_nd(slots, tf.where(slots >= 0)), [WORD_START_CODE]], 0)
        word_source = tf.gather_nd(tf.cast(where[:, 0], tf.int32), tf.where(starts))
        return joined, word_source

    def _word_pieces(self, joined):
        """Words after WORD_START (Q,) -> their greedy longest-match-first pieces: the ids
        (T,) of all words one after another, and the number of pieces (W,) of each word."""
        total = tf.size(joined)
        separators = tf.cast(tf.where(joined == WORD_START_CODE)[:, 0], tf.int32)  # (W + 1,)
        begin, end = separators[:-1] + 1, separators[1:]  # (W,) each word's characters
        encoded = tf.strings.unicode_encode(joined, "UTF-8")
        size = 1 + tf.add_n([tf.cast(joined >= x, tf.int32) for x in (0x80, 0x800, 0x10000)])
        byte = tf.concat([[0], tf.cumsum(size)], 0)  # (Q + 1,) where each character starts

        # First pieces, keyed from WORD_START on; a word too long has none.
        fits = end - begin <= self.max_input_chars_per_word
        count = tf.where(fits, end - begin, 0)
        first, first_id = self._longest_pieces(
            encoded, byte, begin - 1, begin, count, self._max_first
        )  # (W,)
        # The other pieces: from every character after the first piece of an unfinished word.
        after_first = begin + first
        unfinished = (first > 0) & (after_first < end)
        rows = tf.ragged.range(
            after_first, tf.where(unfinished, end, after_first), row_splits_dtype=tf.int32
        )
        at = rows.flat_values  # (R,)
        row_word = tf.searchsorted(rows.row_splits, tf.range(tf.size(at)), side="right") - 1
        count = tf.gather(end, row_word) - at
        rest, rest_id = self._longest_pieces(encoded, byte, at, at, count, self._max_rest)

        # Where the greedy path goes from each character: on by its longest piece, or stuck.
        starts = tf.concat([begin, at], 0)[:, None]  # (W + R, 1)
        on = tf.range(total) + tf.scatter_nd(starts, tf.concat([first, rest], 0), [total])  # (Q,)

        # Walk all words' greedy paths at once, one piece a step, until none moves.
        def step(i, current, moving, path):
            following = tf.gather(on, current)
            moved = following != current
            path = path.write(i, tf.where(moved, current, total))
            return i + 1, following, tf.reduce_any(moved), path

        path = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])
        _, current, _, path = tf.while_loop(
            lambda i, current, moving, path: moving, step, (0, begin, True, path)
        )
        # A word whose path stopped before its end is one unk_token, at its first character.
        failed = tf.gather(joined, current) != WORD_START_CODE  # (W,)
        path = tf.where(failed, total, path.stack())  # (S, W) characters that start a piece
        path = tf.concat([path, tf.where(failed, begin, total)[None]], 0)
        piece_start = tf.math.bincount(path, minlength=total, maxlength=total) > 0  # (Q,)
        first_id = tf.where(failed, self.unk_token_id, first_id)
        piece_id = tf.scatter_nd(starts, tf.concat([first_id, rest_id], 0), [total])  # (Q,)
        ids = tf.gather(piece_id, tf.where(piece_start)[:, 0])  # (T,) in text order
        return ids, tf.reduce_sum(tf.cast(path < total, tf.int32), 0)

    def _longest_pieces(self, encoded, byte, anchor, start, count, longest):
        """The longest vocabulary piece from each `start` (R,) among its first `count` (R,)
        characters, at most `longest`, and its id (0 and -1: none). A candidate's key is
        the text from `anchor` (R,) on; `byte` (Q + 1,): where each character starts in the
        UTF-8 `encoded`."""
        count = tf.minimum(count, longest)
        candidates = tf.where(tf.range(longest) < count[:, None])  # (K, 2): row, length - 1
        row = tf.cast(candidates[:, 0], tf.int32)
        length = tf.cast(candidates[:, 1], tf.int32) + 1
        begin = tf.gather(byte, tf.gather(anchor, row))
        end = tf.gather(byte, tf.gather(start, row) + length)
        piece = tf.strings.substr(encoded, begin, end - begin)
        ids = self._pieces.lookup(piece)  # (K,) -1 where not a piece
        best = tf.math.unsorted_segment_max(tf.where(ids >= 0, length, 0), row, tf.size(count))
        best = tf.maximum(best, 0)  # (R,)
        chosen = tf.where(best > 0, tf.cumsum(count, exclusive=True) + best - 1, tf.size(ids))
        return best, tf.gather(tf.concat([ids, [-1]], 0), chosen)

    # -- ids -> text ----------------------------------------------------------------------

    def detokenize(self, inputs):
        """Ids (T,) -> a string; (B, T) dense or ragged -> (B,) strings.

        Pieces are joined with spaces, and a "##" piece to the one before it; special tokens
        print as themselves.
        """
        self._check_vocabulary()
        if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)):
            ids = inputs
        else:  # numpy arrays and (possibly ragged) Python lists
            ids = tf.ragged.constant(inputs) if isinstance(inputs, list) else tf.constant(inputs)
        if ids.shape.rank == 1:
            return self.detokenize(ids[None])[0]
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        size = len(self.vocabulary)
        tf.debugging.assert_non_negative(ids.flat_values, message="a negative token id")
        tf.debugging.assert_less(
            ids.flat_values, size, message=f"a token id at or above the vocabulary size {size}"
        )
        first = tf.range(tf.size(ids.flat_values, out_type=ids.row_splits.dtype)) == tf.gather(
            ids.row_splits, ids.value_rowids()
        )  # each text's first token
        text = tf.where(
            first,
            tf.gather(tf.constant(self._print_first), ids.flat_values),
            tf.gather(tf.constant(self._print_next), ids.flat_values),
        )
        return tf.strings.reduce_join(ids.with_flat_values(text), axis=-1)

    # -- training and config ------------------------------------------------------------

    @classmethod
    def train(cls, corpus, vocabulary_size, lowercase=True, strip_accents=None, progress=True,
              **kwargs):
        """Train on `corpus` (a string, an iterable of strings or a tf.data.Dataset of strings).

        `kwargs` are the constructor's (special tokens, `split_on_cjk`, `suffix_indicator`).
        With `progress`, a training that takes more than a few seconds says so, and how
        long it took.
        """
        tokenizer = cls(lowercase=lowercase, strip_accents=strip_accents, **kwargs)
        data = corpus
        if not isinstance(corpus, tf.data.Dataset):  # (a list would be read as file names)
            texts = [corpus] if isinstance(corpus, str) else list(corpus)
            if not any(t.strip() for t in texts):
                raise ValueError("Cannot train WordPiece on an empty corpus.")
            data = tf.data.Dataset.from_tensor_slices(texts).batch(1024)
        start = time.monotonic()
        shown = threading.Event()

        def announce():  # keras-hub's training reports nothing: a line once it takes a while
            print(f"WordPiece: training a vocabulary of {vocabulary_size:,} tokens...", flush=True)
            shown.set()

        notice = threading.Timer(PROGRESS_AFTER_SECONDS, announce)
        if progress:
            notice.start()
        try:
            vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
                data,
                vocabulary_size,
                lowercase=lowercase,
                strip_accents=lowercase if strip_accents is None else strip_accents,
                split_on_cjk=tokenizer.split_on_cjk,
                suffix_indicator=tokenizer.suffix_indicator,
                reserved_tokens=tokenizer.special_tokens_list(),
            )
        finally:
            notice.cancel()
        if shown.is_set():
            print(f"WordPiece: trained {vocabulary_size:,} tokens in "
                  f"{time.monotonic() - start:.0f} s.", flush=True)
        return cls(vocabulary, lowercase=lowercase, strip_accents=strip_accents, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary": None,  # saved as a file (save_assets)
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "split_on_cjk": self.split_on_cjk,
            "suffix_indicator": self.suffix_indicator,
            "max_input_chars_per_word": self.max_input_chars_per_word,
        }

    @classmethod
    def from_config(cls, config):
        if isinstance(config.get("vocabulary"), str):  # a config must not read files
            raise ValueError("A WordPieceTokenizer config holds no vocabulary path (an asset).")
        return super().from_config(config)


def _flags(codes, lowercase, strip_accents):
    """Code points -> their `bert_text` flags (same shape)."""
    starts, flags = bert_text.character_flags(lowercase, strip_accents)
    return tf.gather(flags, tf.searchsorted(starts, codes, side="right") - 1)


def _mapping(lowercase, strip_accents):
    """`bert_text.character_mapping` with its characters packed with their flags, and a
    sentinel key after the last (no empty tables)."""
    keys, values = bert_text.character_mapping(lowercase, strip_accents)
    starts, flags = bert_text.character_flags(lowercase, strip_accents)
    packed = values | flags[np.searchsorted(starts, values, side="right") - 1] * FLAG_UNIT
    packed = np.where(values >= 0, packed, -1)
    keys = np.append(keys, np.iinfo(np.int32).max)
    packed = np.concatenate([packed, np.full([1, bert_text.MAX_MAPPED], -1)])
    return tf.constant(keys, tf.int32), tf.constant(packed, tf.int32)
