"""Byte-level BPE (GPT-2's scheme): trained here, applied by keras-hub's BytePairTokenizer."""

import collections
import heapq
import json
from pathlib import Path

import keras
import keras_hub
import regex

from tflm.tokenizers.base import SpecialTokens

# GPT-2's pre-tokenization: words never merge across these boundaries.
GPT2_SPLIT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


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


def train_bpe(corpus, vocabulary_size, special_tokens=()):
    """Learn byte-level BPE merges from `corpus` (a string or an iterable of strings).

    Returns `(vocabulary, merges)` in the layout of GPT-2's vocab.json and merges.txt:
    the 256 byte symbols, then one token per merge, then the special tokens.
    Ties between equally frequent pairs break on the pair itself, so training is
    deterministic. Hand-written because keras-hub and tensorflow-text apply BPE but do
    not train it.
    """
    byte_map = bytes_to_unicode()
    num_merges = vocabulary_size - 256 - len(special_tokens)
    if num_merges < 0:
        raise ValueError(
            f"vocabulary_size={vocabulary_size} is below the 256 byte symbols plus "
            f"{len(special_tokens)} special tokens."
        )
    word_counts = collections.Counter()
    for text in [corpus] if isinstance(corpus, str) else corpus:
        for word in GPT2_SPLIT.findall(text):
            word_counts["".join(byte_map[b] for b in word.encode("utf-8"))] += 1
    if not word_counts:
        raise ValueError("Cannot train BPE on an empty corpus.")

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

    vocabulary = {symbol: i for i, symbol in enumerate(byte_map[b] for b in range(256))}
    for a, b in merges:
        vocabulary.setdefault(a + b, len(vocabulary))
    for token in special_tokens:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary, [f"{a} {b}" for a, b in merges]


@keras.saving.register_keras_serializable(package="tflm")
class BPETokenizer(SpecialTokens, keras_hub.tokenizers.BytePairTokenizer):
    """Byte-level BPE: GPT-2's vocab.json + merges.txt, or a vocabulary trained here.

    `vocabulary` and `merges` are file paths or in-memory data; special tokens must be
    in the vocabulary and are never split. The files are saved inside `.keras` archives.

    Example:
    >>> tokenizer = BPETokenizer("gpt2/vocab.json", "gpt2/merges.txt")   # GPT-2's files
    >>> tokenizer = BPETokenizer.train(text, vocabulary_size=4096)       # or your own
    >>> tokenizer.detokenize(tokenizer("Hello world"))
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
        **kwargs,
    ):
        self._set_special_tokens(bos_token, eos_token, pad_token, mask_token, unk_token)
        kwargs.setdefault("unsplittable_tokens", self.special_tokens_list())
        super().__init__(vocabulary=vocabulary, merges=merges, **kwargs)
        if self.vocabulary is not None:
            self._check_special_tokens_in(self.vocabulary, "BPE")

    @classmethod
    def train(cls, corpus, vocabulary_size, eos_token="<|endoftext|>", **special_tokens):
        """Train on `corpus` (a string or an iterable of strings) to `vocabulary_size` tokens."""
        tokens = [eos_token, *special_tokens.values()]
        vocabulary, merges = train_bpe(
            corpus, vocabulary_size, [t for t in tokens if t is not None]
        )
        return cls(vocabulary, merges, eos_token=eos_token, **special_tokens)

    def save_vocabulary(self, directory):
        """Write vocab.json and merges.txt (GPT-2's layout) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.json").write_text(json.dumps(self.vocabulary), encoding="utf-8")
        (directory / "merges.txt").write_text("\n".join(self.merges) + "\n", encoding="utf-8")
