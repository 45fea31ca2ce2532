"""Byte-level BPE (GPT-2's scheme): trained here in plain Python, applied in core TensorFlow ops.

`BPETokenizer` splits text into words with RE2 regexes (TensorFlow's own), merges the
bytes of all the words of a batch at once in a `tf.while_loop` over hash-table lookups,
and joins ids back into text by table lookups. Every op is in core TensorFlow, so the
same code runs eagerly, in `tf.data` and in SavedModels that load without
tensorflow-text; it keeps no state that grows (no cache). Words are split by the rules of
GPT-2, Llama 3 or Qwen2 (`PATTERNS`), exactly as Hugging Face's `tokenizers` splits them,
after its NFC normalization where a tokenizer asks for it (Qwen2's does).

Shapes in comments: B texts in a batch, T tokens of a text, W words of a batch, U distinct
words, S symbols of the distinct words (their bytes, then merged tokens); None, a ragged
dimension.
"""

import collections
import functools
import heapq
import json
import time
import unicodedata
from pathlib import Path

import keras
import keras_hub
import regex
import tensorflow as tf

from tflm.tokenizers.base import SpecialTokens

# The pre-tokenizers' regexes, as GPT-2, Llama 3 (tiktoken's cl100k) and Qwen2 write them:
# words never merge across their matches.
PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
GPT2_SPLIT = regex.compile(PATTERNS["gpt2"])

# The same rules for RE2. RE2's \s is ASCII only, so white space is spelled out (as the
# references' engines define it: Unicode's White_Space); RE2's tables are Unicode 15.1, so
# the letters and numbers Unicode 16.0 added, which the references know, are listed.
NEWLINE = r"\n\r"
OTHER_SPACE = (
    r"\t\x0b\x0c \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
)
SPACE = NEWLINE + OTHER_SPACE
LETTER = (
    r"\p{L}\x{1c89}-\x{1c8a}\x{a7cb}-\x{a7cd}\x{a7da}-\x{a7dc}\x{105c0}-\x{105f3}"
    r"\x{10d4a}-\x{10d65}\x{10d6f}-\x{10d85}\x{10ec2}-\x{10ec4}\x{11380}-\x{11389}\x{1138b}"
    r"\x{1138e}\x{11390}-\x{113b5}\x{113b7}\x{113d1}\x{113d3}\x{11bc0}-\x{11be0}"
    r"\x{13460}-\x{143fa}\x{16100}-\x{1611d}\x{16d40}-\x{16d6c}\x{18cff}\x{1e5d0}-\x{1e5ed}"
    r"\x{1e5f0}\x{2ebf0}-\x{2ee5d}"
)
NUMBER = (
    r"\p{N}\x{10d40}-\x{10d49}\x{116d0}-\x{116e3}\x{11bf0}-\x{11bf9}\x{16130}-\x{16139}"
    r"\x{16d70}-\x{16d79}\x{1ccf0}-\x{1ccf9}\x{1e5f1}-\x{1e5fa}"
)
# What the `Digits` pre-tokenizer isolates (Rust's char::is_numeric, Unicode 17.0).
DIGIT = NUMBER + r"\x{11de0}-\x{11de9}\x{16ff4}-\x{16ff6}"


def _llama3_word(number):
    return (
        rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^{NEWLINE}{LETTER}{NUMBER}]?[{LETTER}]+|{number}"
        rf"| ?[^{SPACE}{LETTER}{NUMBER}]+[{NEWLINE}]*|[{SPACE}]*[{NEWLINE}]+|[{SPACE}]+"
    )


# Each pattern for RE2, without its look-ahead alternative \s+(?!\S), and the white space
# (with the character after it) before which that alternative always leaves a boundary:
# the last space of a run that a non-space follows (for Llama 3 and Qwen2, unless it is a
# line break, which \s*[\r\n]+ takes). A boundary marked there does the look-ahead's work.
RE2_SPLITS = {
    "gpt2": (
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{LETTER}]+| ?[{NUMBER}]+| ?[^{SPACE}{LETTER}{NUMBER}]+"
        rf"|[{SPACE}]+",
        rf"[{SPACE}][^{SPACE}]",
    ),
    "llama3": (_llama3_word(rf"[{NUMBER}]{{1,3}}"), rf"[{OTHER_SPACE}][^{SPACE}]"),
    "qwen2": (_llama3_word(rf"[{NUMBER}]"), rf"[{OTHER_SPACE}][^{SPACE}]"),
}
# A byte that valid UTF-8 never holds and no RE2 match crosses: it marks word boundaries.
MARK = b"\xff"
NO_MERGE = tf.int64.max

# The `tokenizers` library normalizes with Unicode 9.0's tables; these code points (as
# Unicode 18.0 has them) are the marks and the canonical decompositions added since, which
# its NFC leaves as they are. Python's unicodedata, less these, is that data.
NFC_UNKNOWN = (
    "5c8-5c9 7fd 897-89f 8ca-8d3 9fe c3c d3b-d3c eba 1715 1abf-1af0 1df6-1dfa a82c 105c9 105e4 "
    "10d24-10d27 10d69-10d6d 10eab-10eac 10ecb-10ecf 10ef0-10efb 10efd-10eff 10f46-10f50 "
    "10f82-10f85 11070 1133b 11383 11385 1138e 11391 113c5 113c7-113c8 113ce-113d0 1145e "
    "11839-1183a 11938 1193d-1193e 11943 119e0 11a34 11a47 11a99 11d42 11d44-11d45 11d97 "
    "11f41-11f42 16121-16128 1612f 16d68-16d6a 16ff0-16ff1 1d127-1d128 1d250-1d252 "
    "1d25b-1d25c 1d25f 1d280-1d281 1e08f 1e130-1e136 1e2ae 1e2ec-1e2ef 1e4ec-1e4ef "
    "1e5ee-1e5ef 1e6e3 1e6e6 1e6ee-1e6ef 1e6f5"
)

VOCABULARY_FILE = "vocabulary.json"  # keras-hub's asset names, inside .keras archives
MERGES_FILE = "merges.txt"


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            characters.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, characters)))


# Progress lines of a training start after this many seconds, and come this often.
PROGRESS_AFTER_SECONDS = 3.0
PROGRESS_EVERY_SECONDS = 5.0


def train_bpe(corpus, vocabulary_size, special_tokens=(), pre_tokenizer="gpt2", progress=True):
    """Learn byte-level BPE merges from `corpus` (a string or an iterable of strings),
    its words split by the rules `pre_tokenizer` names (a key of `PATTERNS`).

    Returns `(vocabulary, merges)` in the layout of GPT-2's vocab.json and merges.txt:
    the 256 byte symbols, then one token per merge, then the special tokens.
    Ties between equally frequent pairs break on the pair itself, so training is
    deterministic. Hand-written because keras-hub and tensorflow-text apply BPE but do
    not train it. With `progress`, a training that takes more than a few seconds prints
    how far it got every few seconds.
    """
    start = last = time.monotonic()
    shown = False
    byte_map = bytes_to_unicode()
    num_merges = vocabulary_size - 256 - len(special_tokens)
    if num_merges < 0:
        raise ValueError(
            f"vocabulary_size={vocabulary_size} is below the 256 byte symbols plus "
            f"{len(special_tokens)} special tokens."
        )
    split = regex.compile(PATTERNS[pre_tokenizer])
    word_counts = collections.Counter()
    for text in [corpus] if isinstance(corpus, str) else corpus:
        for word in split.findall(text):
            word_counts["".join(byte_map[b] for b in word.encode("utf-8"))] += 1
    if not word_counts:
        raise ValueError("Cannot train BPE on an empty corpus.")
    if progress and time.monotonic() - start >= PROGRESS_AFTER_SECONDS:
        print(f"BPE: counted {len(word_counts):,} distinct words in "
              f"{time.monotonic() - start:.0f} s; learning {num_merges:,} merges", flush=True)
        shown = True

    words = [list(word) for word in word_counts]
    counts = list(word_counts.values())
    pair_counts = collections.Counter()
    pair_words = collections.defaultdict(set)  # pair -> indices of words that contain it
    for index, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += counts[index]
            pair_words[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(merges) < num_merges and heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count or negative_count == 0:
            continue  # a stale entry: the pair's count changed since it was pushed
        merges.append(pair)
        if progress and len(merges) % 100 == 0:  # the clock costs little a hundred merges apart
            now = time.monotonic()
            if now - start >= PROGRESS_AFTER_SECONDS and now - last >= PROGRESS_EVERY_SECONDS:
                print(f"BPE: merges {len(merges):,}/{num_merges:,} ({now - start:.0f} s)",
                      flush=True)
                shown, last = True, now
        merged = pair[0] + pair[1]
        changed = set()
        for index in pair_words.pop(pair):
            symbols, count = words[index], counts[index]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= count
                changed.add(old)
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[index] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += count
                pair_words[new].add(index)
                changed.add(new)
        del pair_counts[pair]
        for other in changed - {pair}:
            if pair_counts[other] > 0:
                heapq.heappush(heap, (-pair_counts[other], other))

    if shown:
        print(f"BPE: learned {len(merges):,} merges in {time.monotonic() - start:.0f} s.",
              flush=True)
    vocabulary = {symbol: i for i, symbol in enumerate(byte_map[b] for b in range(256))}
    for a, b in merges:
        vocabulary.setdefault(a + b, len(vocabulary))
    for token in special_tokens:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary, [f"{a} {b}" for a, b in merges]


@keras.saving.register_keras_serializable(package="tflm")
class BPETokenizer(SpecialTokens, keras_hub.tokenizers.Tokenizer):
    """Byte-level BPE exactly as GPT-2, Llama 3 and Qwen2 apply it, in core TensorFlow ops.

    `vocabulary` is a vocab.json path or a dict token -> id; `merges` a merges.txt path
    or a list of "a b" rules, highest priority first (a "#version" first line is skipped).
    Special tokens and `added_tokens` must be in the vocabulary; where they appear in text
    they become their id and no word crosses them (the longest where they overlap). Text
    is put in NFC if `normalizer="NFC"` (between those tokens) and split into words by the
    rules `pre_tokenizer` names ("gpt2", "llama3" or "qwen2", the regexes of `PATTERNS`),
    each digit apart first if `individual_digits`; each word's UTF-8 bytes become GPT-2's
    byte symbols, and the lowest-ranked adjacent pair is merged until none is in `merges`
    (with `ignore_merges`, a word that is itself in the vocabulary is its id at once). So
    the ids are those of transformers' GPT2Tokenizer and of Hugging Face's `tokenizers`
    (`from_tokenizer_json` reads its files). The vocabulary and merges are saved inside
    `.keras` archives.

    Example:
    >>> tokenizer = BPETokenizer.train("the cat sat on the mat. " * 20, vocabulary_size=270)
    >>> ids = tokenizer.tokenize("the cat")                         # (T,) int32
    >>> tokenizer.detokenize(ids).numpy()                           # b'the cat'
    >>> tokenizer.tokenize(["the mat", "a cat"])                    # ragged (B, None) int32
    >>> gpt2 = BPETokenizer("gpt2/vocab.json", "gpt2/merges.txt")   # GPT-2's own files
    """

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token=None,
        mask_token=None,
        unk_token=None,
        pre_tokenizer="gpt2",
        individual_digits=False,
        added_tokens=(),
        ignore_merges=False,
        normalizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pre_tokenizer not in RE2_SPLITS:
            raise ValueError(f"pre_tokenizer={pre_tokenizer!r} is not one of {list(RE2_SPLITS)}.")
        if normalizer not in (None, "NFC"):
            raise ValueError(f"normalizer={normalizer!r} is not None or 'NFC'.")
        self._set_special_tokens(bos_token, eos_token, pad_token, mask_token, unk_token)
        self.normalizer = normalizer
        self.pre_tokenizer = pre_tokenizer
        self.individual_digits = individual_digits
        self.added_tokens = list(added_tokens)
        self.ignore_merges = ignore_merges
        self.file_assets = [VOCABULARY_FILE, MERGES_FILE]
        self.vocabulary = self.merges = None
        if vocabulary is not None or merges is not None:
            self.set_vocabulary_and_merges(vocabulary, merges)

    def get_config(self):
        return {
            **super().get_config(),
            "pre_tokenizer": self.pre_tokenizer,
            "individual_digits": self.individual_digits,
            "added_tokens": list(self.added_tokens),
            "ignore_merges": self.ignore_merges,
            "normalizer": self.normalizer,
        }

    @classmethod
    def train(
        cls, corpus, vocabulary_size, eos_token="<|endoftext|>", pre_tokenizer="gpt2",
        progress=True, **special_tokens,
    ):
        """Train on `corpus` (a string or an iterable of strings) to `vocabulary_size` tokens.

        With `progress`, a training that takes more than a few seconds prints how far it got."""
        tokens = [eos_token, *special_tokens.values()]
        vocabulary, merges = train_bpe(
            corpus, vocabulary_size, [t for t in tokens if t is not None], pre_tokenizer,
            progress,
        )
        return cls(
            vocabulary, merges, eos_token=eos_token, pre_tokenizer=pre_tokenizer, **special_tokens
        )

    def set_vocabulary_and_merges(self, vocabulary, merges):
        """Set the vocabulary (a vocab.json path or a dict) and merges (a path or a list)."""
        if isinstance(vocabulary, (str, Path)):
            vocabulary = json.loads(Path(vocabulary).read_text(encoding="utf-8"))
        if isinstance(merges, (str, Path)):
            merges = Path(merges).read_text(encoding="utf-8").split("\n")
        if vocabulary is None or merges is None:
            raise ValueError("A BPETokenizer needs both a vocabulary and merges.")
        vocabulary = dict(vocabulary)
        merges = [m.rstrip("\r") for m in merges if m.rstrip("\r")]
        if merges and merges[0].startswith("#version"):
            merges = merges[1:]
        byte_map = bytes_to_unicode()
        byte_symbols = [byte_map[b] for b in range(256)]
        missing = [s for s in byte_symbols if s not in vocabulary]
        if missing:
            raise ValueError(f"The BPE vocabulary lacks the byte symbol(s) {missing}.")
        self._check_special_tokens_in(vocabulary, "BPE")
        missing = [t for t in self.added_tokens if t not in vocabulary]
        if missing:
            raise ValueError(f"Added token(s) {missing} are not in the BPE vocabulary.")
        id_space = max(vocabulary.values()) + 1
        rules = {}  # (left id, right id) -> (rank, merged id); a repeated rule keeps its last rank
        for rank, merge in enumerate(merges):
            parts = merge.split(" ")
            if len(parts) != 2 or not all(p in vocabulary for p in [*parts, "".join(parts)]):
                raise ValueError(
                    f"Merge rule {merge!r} is not two vocabulary tokens whose join is one too."
                )
            rules[vocabulary[parts[0]], vocabulary[parts[1]]] = rank, vocabulary["".join(parts)]

        self.vocabulary, self.merges = vocabulary, merges
        self._id_space = id_space
        self._byte_ids = [vocabulary[s] for s in byte_symbols]  # byte -> id of its symbol
        self._symbol_codes = [ord(s) for s in byte_symbols]
        # The tokens found whole in text, longest first: where they overlap, the reference
        # takes the longest.
        whole = list(dict.fromkeys(self.special_tokens_list() + self.added_tokens))
        self._whole_tokens = sorted(whole, key=len, reverse=True)
        byte_of = {symbol: byte for byte, symbol in byte_map.items()}
        # Built eagerly: a table first made inside a tf.data map could not be reused.
        with tf.init_scope():
            self._merge_table = _int_table(
                {a * id_space + b: rank << 32 | merged for (a, b), (rank, merged) in rules.items()},
                NO_MERGE,
            )
            self._whole_table = _string_table({t: vocabulary[t] for t in whole})
            if self.ignore_merges:  # the model's own tokens (a word never equals a whole token)
                self._word_table = _string_table(
                    {t: i for t, i in vocabulary.items() if t not in whole}
                )
            self._bytes_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(vocabulary.values()), tf.int64),
                    tf.constant([_token_bytes(t, byte_of) for t in vocabulary], tf.string),
                ),
                default_value=b"",
            )
        self._token_of_id = {i: t for t, i in vocabulary.items()}
        self._nfc = _NFC() if self.normalizer == "NFC" else None

    def save_assets(self, dir_path):
        self._write(Path(dir_path), VOCABULARY_FILE, MERGES_FILE)

    def load_assets(self, dir_path):
        self.set_vocabulary_and_merges(
            Path(dir_path) / VOCABULARY_FILE, Path(dir_path) / MERGES_FILE
        )

    def save_vocabulary(self, directory):
        """Write vocab.json and merges.txt (GPT-2's layout) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._write(directory, "vocab.json", "merges.txt")

    def _write(self, directory, vocabulary_file, merges_file):
        self._check_vocabulary()
        vocabulary = json.dumps(dict(self.vocabulary))
        (directory / vocabulary_file).write_text(vocabulary, encoding="utf-8")
        merges = "".join(f"{m}\n" for m in ["#version: 0.2", *self.merges])
        (directory / merges_file).write_text(merges, encoding="utf-8")

    def _check_vocabulary(self):
        if self.vocabulary is None:
            raise ValueError("This BPETokenizer has no vocabulary and merges yet.")

    def get_vocabulary(self):
        """Every token, in the order of their ids."""
        self._check_vocabulary()
        return [self._token_of_id[i] for i in sorted(self._token_of_id)]

    def vocabulary_size(self):
        self._check_vocabulary()
        return len(self.vocabulary)

    def id_to_token(self, id):
        self._check_vocabulary()
        if id not in self._token_of_id:
            raise ValueError(f"Token id {id} is not in the vocabulary.")
        return self._token_of_id[id]

    def token_to_id(self, token):
        self._check_vocabulary()
        if token not in self.vocabulary:
            raise ValueError(f"Token {token!r} is not in the vocabulary.")
        return self.vocabulary[token]

    def tokenize(self, inputs):
        """A string -> (T,) int32 ids; (B,) strings -> ragged (B, None) int32 ids."""
        self._check_vocabulary()
        texts = tf.convert_to_tensor(inputs, tf.string)
        if texts.shape.rank == 0:
            return self._tokenize(texts[None])[0]
        if texts.shape.rank != 1:
            raise ValueError(f"BPETokenizer takes a string or a batch (B,), not {texts.shape}.")
        return self._tokenize(texts)

    def _tokenize(self, texts):
        words = self._split(texts)                                   # (B, None) strings
        distinct, index = tf.unique(words.flat_values)               # (U,), (W,)
        ids = tf.gather(self._encode(distinct), index)               # (W, None)
        splits = tf.gather(ids.row_splits, words.row_splits)         # words -> texts
        return tf.RaggedTensor.from_row_splits(ids.flat_values, splits, validate=False)

    def _split(self, texts):
        """Texts (B,) -> their words (B, None): the whole tokens, then (if
        `individual_digits`) each digit, and between them the pre-tokenizer's matches of
        the text (in NFC if `normalizer` says so)."""
        word, last_space = RE2_SPLITS[self.pre_tokenizer]
        whole = "|".join(_literal(t) for t in self._whole_tokens)
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")  # no MARK
        # Whole tokens, then digits, become pieces of their own, as the reference cuts them
        # out before it splits what is left: a MARK on either side.
        if whole:
            texts = tf.strings.regex_replace(texts, whole, MARK + b"\\0" + MARK)
        if self._nfc is not None:
            texts = self._normalize(texts)
        if self.individual_digits:
            digits = f"{whole}|[{DIGIT}]" if whole else f"[{DIGIT}]"  # tokens as they are
            texts = tf.strings.regex_replace(texts, digits, MARK + b"\\0" + MARK)
        # A MARK before the last space of each run that a non-space follows (the end of a
        # piece is none: no RE2 match takes a MARK); whole tokens are passed over as they
        # are, then found before the pre-tokenizer's matches.
        if whole:
            texts = tf.strings.regex_replace(texts, f"({whole})|({last_space})", MARK + b"\\1\\2")
            word = f"{whole}|{word}"
        else:
            texts = tf.strings.regex_replace(texts, last_space, MARK + b"\\0")
        texts = tf.strings.regex_replace(texts, word, MARK + b"\\0")
        words = tf.strings.split(texts, sep=MARK)
        return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)

    def _normalize(self, texts):
        """NFC of the text between the whole tokens (the reference normalizes what the
        added tokens leave, not across them)."""
        pieces = tf.strings.split(texts, sep=MARK)                    # (B, None)
        flat = pieces.flat_values
        # below U+0300 no character decomposes for good, composes as second or is a mark
        stable = tf.strings.regex_full_match(flat, r"[\x00-\x{2ff}]*")
        changing = tf.where(~stable & (self._whole_table.lookup(flat) < 0))[:, 0]
        flat = tf.tensor_scatter_nd_update(
            flat, changing[:, None], self._nfc(tf.gather(flat, changing))
        )
        return tf.strings.reduce_join(pieces.with_flat_values(flat), axis=-1, separator=MARK)

    def _encode(self, words):
        """Distinct words (U,) -> their ids (U, None): a whole token's id, or BPE's tokens."""
        whole = self._whole_table.lookup(words)                      # (U,) -1: none
        if self.ignore_merges:  # a word in the vocabulary is its one id
            data = tf.strings.unicode_decode(words, "ISO-8859-1")    # (U, None) bytes
            codes = tf.constant(self._symbol_codes, tf.int32)        # byte -> its symbol
            symbols = tf.ragged.map_flat_values(tf.gather, codes, data)
            symbols = tf.strings.unicode_encode(symbols, "UTF-8")    # (U,) as in the vocabulary
            whole = tf.where(whole >= 0, whole, self._word_table.lookup(symbols))
        is_whole = whole >= 0
        data = tf.strings.unicode_decode(tf.where(is_whole, " ", words), "ISO-8859-1")
        rows = tf.cast(data.value_rowids(), tf.int32)                # (S,) word of each byte
        ids = tf.gather(tf.constant(self._byte_ids, tf.int32), data.flat_values)  # (S,)
        ids = tf.where(tf.gather(is_whole, rows), tf.gather(whole, rows), ids)
        ids, rows = self._merge(ids, rows)
        rows = tf.cast(rows, tf.int64)  # int64 row splits, as the other tokenizers give
        count = tf.size(words, tf.int64)
        return tf.RaggedTensor.from_value_rowids(ids, rows, nrows=count, validate=False)

    def _merge(self, ids, rows):
        """Apply the merges to the symbols (S,) of all words at once, as GPT-2 does to each:
        while a word has a pair in `merges`, merge every occurrence of its lowest-ranked
        pair, left to right."""

        def step(ids, rows, _):
            pairs = tf.cast(ids[:-1], tf.int64) * self._id_space + tf.cast(ids[1:], tf.int64)
            found = self._merge_table.lookup(pairs)  # (S - 1,) rank << 32 | merged id
            found = tf.where(rows[:-1] == rows[1:], found, NO_MERGE)  # no pair across words
            best = tf.gather(tf.math.segment_min(found, rows[:-1]), rows[:-1])
            chosen = _left_to_right((found == best) & (found != NO_MERGE))
            merged = tf.cast(tf.bitwise.bitwise_and(found, 0xFFFFFFFF), tf.int32)
            ids = tf.concat([tf.where(chosen, merged, ids[:-1]), ids[-1:]], 0)
            keep = tf.concat([tf.ones_like(ids[:1], tf.bool), ~chosen], 0)  # drop right halves
            return tf.boolean_mask(ids, keep), tf.boolean_mask(rows, keep), tf.reduce_any(chosen)

        ids, rows, _ = tf.while_loop(
            lambda ids, rows, merged: merged, step, (ids, rows, tf.constant(True))
        )
        return ids, rows

    def detokenize(self, inputs):
        """Ids (T,) -> a string; (B, T) dense or ragged -> (B,) strings (byte strings, as
        the tokens may end inside a character). Special tokens print as themselves."""
        self._check_vocabulary()
        if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)):
            ids = inputs
        else:  # numpy arrays and (possibly ragged) Python lists
            ids = tf.ragged.constant(inputs) if isinstance(inputs, list) else tf.constant(inputs)
        ids = tf.cast(ids, tf.int64)
        flat = ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids
        tf.debugging.assert_non_negative(flat, message="a negative token id")
        tf.debugging.assert_less(
            flat, tf.constant(self._id_space, tf.int64),
            message=f"token id at or above the vocabulary size {self._id_space}",
        )
        pieces = tf.ragged.map_flat_values(self._bytes_table.lookup, ids)
        return tf.strings.reduce_join(pieces, axis=-1)


def _left_to_right(chosen):
    """Of overlapping occurrences of a pair (runs of chosen pairs, as in "a a a"), keep the
    first, third, ... of each run: GPT-2 merges occurrences left to right."""

    def alternate():
        position = tf.range(tf.size(chosen))
        run = tf.cumsum(tf.cast(~chosen, tf.int32))  # a run is numbered as the pair before it
        start = tf.gather(tf.math.segment_min(position, run), run)
        offset = position - start - tf.cast(run > 0, tf.int32)  # place within the run
        return chosen & (offset % 2 == 0)

    overlapping = tf.reduce_any(chosen[1:] & chosen[:-1])
    return tf.cond(overlapping, alternate, lambda: chosen)


def _string_table(ids):
    """A hash table string -> int32 id (-1 for other strings)."""
    ids = ids or {MARK: -1}  # a table cannot be empty; no word holds a MARK
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(ids), tf.string), tf.constant(list(ids.values()), tf.int32)
        ),
        default_value=-1,
    )


def _literal(text):
    """`text` as an RE2 regex that matches it alone (letters and digits as they are)."""
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)


def _token_bytes(token, byte_of):
    """The bytes a token stands for: those of its byte symbols, or its own UTF-8 where it
    has a character that is no byte's symbol (an added token may): the rule of Hugging
    Face's ByteLevel decoder."""
    if all(c in byte_of for c in token):
        return bytes(byte_of[c] for c in token)
    return token.encode("utf-8")


@functools.cache
def _nfc_data():
    """The tables of NFC as the reference has them: full canonical decompositions (code
    point -> its decomposition's UTF-8), the nonzero combining classes, and the pairs that
    compose ((first << 21 | second) -> composite)."""
    unknown = set()
    for part in NFC_UNKNOWN.split():
        first, _, last = part.partition("-")
        unknown.update(range(int(first, 16), int(last or first, 16) + 1))
    decompositions, classes, compositions = {}, {}, {}
    for code in range(0x110000):
        if code in unknown or 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        if unicodedata.combining(char):
            classes[code] = unicodedata.combining(char)
        decomposed = unicodedata.normalize("NFD", char)
        if decomposed != char:
            decompositions[code] = decomposed.encode("utf-8")
        # a primary composite: a pair that NFC joins (no exclusion, no singleton)
        pair = _canonical_pair(char)
        if pair and unicodedata.normalize("NFC", pair) == char:
            compositions[ord(pair[0]) << 21 | ord(pair[1])] = code
    return decompositions, classes, compositions


def _canonical_pair(char):
    """The two characters of `char`'s canonical decomposition's first step, if two."""
    if 0xAC00 <= ord(char) <= 0xD7A3:  # Hangul: LV = L + V, LVT = LV + T
        index = ord(char) - 0xAC00
        if index % 28:
            return chr(ord(char) - index % 28) + chr(0x11A7 + index % 28)
        return chr(0x1100 + index // 588) + chr(0x1161 + index % 588 // 28)
    fields = unicodedata.decomposition(char).split()
    if len(fields) == 2 and not fields[0].startswith("<"):
        return "".join(chr(int(f, 16)) for f in fields)
    return None


class _NFC(tf.Module):
    """Unicode NFC in core TensorFlow ops, with the reference's tables: decompose each
    character, order the marks after each starter by combining class, then compose. A
    tf.Module, so that exports track its tables."""

    def __init__(self):
        super().__init__()
        decompositions, classes, compositions = _nfc_data()
        seconds = sorted({key & 0x1FFFFF for key in compositions})
        with tf.init_scope():
            self.decompositions = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(decompositions), tf.int64),
                    tf.constant(list(decompositions.values()), tf.string),
                ),
                default_value=b"",
            )
            self.classes = _int_table(classes, 0)
            self.compositions = _int_table(compositions, -1)
            self.seconds = _int_table(dict.fromkeys(seconds, 1), 0)

    def __call__(self, texts):
        """Strings (P,) -> their NFC (P,)."""
        chars = tf.strings.unicode_decode(texts, "UTF-8")            # (P, None)
        codes = chars.flat_values                                     # (N,)
        decomposed = self.decompositions.lookup(tf.cast(codes, tf.int64))
        each = tf.strings.unicode_encode(codes[:, None], "UTF-8")
        each = tf.where(decomposed == b"", each, decomposed)
        texts = tf.strings.reduce_join(chars.with_flat_values(each), axis=-1)
        chars = tf.strings.unicode_decode(texts, "UTF-8")            # decomposed
        codes, rows = chars.flat_values, chars.value_rowids()
        first = tf.concat([tf.ones_like(rows[:1], tf.bool), rows[1:] != rows[:-1]], 0)
        # canonical order: the marks after a starter (or at a text's start) by class;
        # argsort by (group, class) is stable
        classes = self.classes.lookup(tf.cast(codes, tf.int64))      # (N,) int64, 0: starter
        group = tf.cumsum(tf.cast(first | (classes == 0), tf.int64))
        order = tf.argsort(group * 256 + classes, stable=True)
        codes, classes = tf.gather(codes, order), tf.gather(classes, order)
        composed = self._compose(codes, classes, first)
        codes = tf.where(composed >= 0, composed, codes)
        out = chars.with_flat_values(codes)
        out = tf.ragged.boolean_mask(out, chars.with_flat_values(composed != -2))
        return tf.strings.unicode_encode(out, "UTF-8")

    def _compose(self, codes, classes, first):
        """Canonical composition (UAX #15): per code point, its composite (>= 0), -1 to keep
        it as it is, -2 if it joined the starter before it. Composition runs in chains that
        start at each text and at each starter that nothing composes with as second (none
        reaches back past it), all chains a step at a time."""
        second = self.seconds.lookup(tf.cast(codes, tf.int64)) > 0
        chain = first | ((classes == 0) & ~second)
        starts = tf.cast(tf.where(chain)[:, 0], tf.int32)              # (C,)
        size = tf.size(codes)
        lengths = tf.concat([starts[1:], size[None]], 0) - starts
        state = (
            tf.fill([size], tf.constant(-1, codes.dtype)),            # per code point
            tf.gather(codes, starts),                                 # (C,) the starter
            starts,                                                   # its position
            tf.gather(classes, starts) == 0,                          # whether there is one
            tf.zeros_like(starts, tf.int64),                          # the last class kept
        )

        def step(k, out, starter, place, has, last):
            active = k < lengths
            at = tf.minimum(starts + k, size - 1)
            code, cls = tf.gather(codes, at), tf.gather(classes, at)
            key = tf.cast(starter, tf.int64) * 2**21 + tf.cast(code, tf.int64)
            composite = tf.cast(self.compositions.lookup(key), codes.dtype)
            joins = active & has & (composite >= 0) & ((last < cls) | (last == 0))
            out = tf.tensor_scatter_nd_update(  # the starter becomes the composite
                out, tf.boolean_mask(place, joins)[:, None], tf.boolean_mask(composite, joins))
            joined = tf.boolean_mask(at, joins)
            out = tf.tensor_scatter_nd_update(out, joined[:, None], tf.fill(tf.shape(joined), -2))
            kept = active & ~joins
            starts_anew = kept & (cls == 0)
            starter = tf.where(joins, composite, tf.where(starts_anew, code, starter))
            return (k + 1, out, starter, tf.where(starts_anew, at, place),
                    has | starts_anew, tf.where(kept, cls, last))

        _, out, *_ = tf.while_loop(
            lambda k, *_: k < tf.reduce_max(tf.concat([lengths, [0]], 0)), step, (1, *state)
        )
        return out


def _int_table(values, default):
    """A hash table int64 -> int64 (`default` for other keys)."""
    values = values or {-1: default}  # a table cannot be empty
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(values), tf.int64), tf.constant(list(values.values()), tf.int64)
        ),
        default_value=default,
    )
