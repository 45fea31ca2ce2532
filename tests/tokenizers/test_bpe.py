import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.data.corpora import tiny_shakespeare
from tests.helpers import export_tokenizer, graph_op_types, run_in_core_tensorflow, tiny_gpt
from tflm.tokenizers import BPETokenizer, train_bpe
from tflm.tokenizers.bpe import GPT2_SPLIT, bytes_to_unicode

SHAKESPEARE = tiny_shakespeare().read_text()[:200_000]
MULTILINGUAL = (
    "héllo wörld café naïve déjà vu 世界 你好世界 こんにちは 한국어 👩‍👩‍👧 🎉 Ελληνικά "
    "русский текст العربية עברית ＦＵＬＬ１２３ "
)
# The cases GPT-2's rules treat apart: contractions ('S is not one), runs of spaces before
# words, at the end and at the start, Unicode spaces, marks, control characters, emoji
# sequences, scripts without spaces, digits of other scripts, special tokens inside text.
CASES = [
    "", " ", "   ", "hello", " hello", "hello ", "a   b", "  leading", "trailing   ",
    "a \n\n b", "x\t\ty", "  \n", "\n\nfoo\n", "\r\n\r\nline",
    "it's can't we're you've I'm we'll he'd", "IT'S 'S 's'S's '' 'x",
    "a\u00a0b \u00a0 c", "a\u3000\u3000b", "x\u2028y \u2029", "\x85\x1c\x1f x",
    "e\u0301 n\u0303 ç", "\x00\x01\x07\x7f\ufeff", "👩‍👩‍👧 🏳️‍🌈 👍🏽", "ＡＢＣ　１２３！",
    "עברית العربية ١٢٣", "123 4567 ½ Ⅻ ٣٤٥", "!!! ... ---??? (x) [y]", "世界你好，世界。こんにちは",
    "Todhri \U000105c0\U000105c1 Garay \U00010d40",  # Unicode 16.0: RE2's tables lack them
    "a<|endoftext|>b", " <|endoftext|> ", "x  <|endoftext|>", "<|endoftext|><pad><|endoftext|>",
    "!<|endoftext|>!", "hello<|endoftext|>world", " \t <|endoftext|>\t x", "<|endoftext", "<pad",
    SHAKESPEARE[:5000] + MULTILINGUAL * 10,  # longer than a model's context
]


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(SHAKESPEARE, vocabulary_size=600)


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    """A tokenizer trained on text with multi-byte characters, its files in GPT-2's layout,
    and transformers' GPT2Tokenizer read from those files."""
    from transformers import GPT2Tokenizer  # its tokenizer classes do not import torch

    corpus = SHAKESPEARE[:50_000] + MULTILINGUAL * 30
    tokenizer = BPETokenizer.train(corpus, 800, pad_token="<pad>")
    directory = tmp_path_factory.mktemp("gpt2")
    tokenizer.save_vocabulary(directory)
    return tokenizer, GPT2Tokenizer.from_pretrained(str(directory), pad_token="<pad>")


def random_texts(seed, count, more_pieces=()):
    """Random code points of every plane, mixed with the pieces GPT-2's rules treat apart
    (and `more_pieces`)."""
    rng = np.random.default_rng(seed)
    pieces = [" ", "  ", "\n", "\t", "\u00a0", "\u3000", "'s", "'S", "'ll", "'", "<|endoftext|>",
              "<pad>", "the", " king", "世界", "👩‍👩‍👧", "é", "12", "!?", *more_pieces]
    texts = []
    for _ in range(count):
        text = []
        for _ in range(rng.integers(0, 30)):
            if rng.random() < 0.4:
                text.append(pieces[rng.integers(len(pieces))])
            else:
                top = 0x110000 if rng.random() < 0.5 else 0x3000  # any plane, or the common ones
                code = int(rng.integers(0, top))
                text.append(chr(0x41 if 0xD800 <= code <= 0xDFFF else code))
        texts.append("".join(text))
    return texts


def reference_encode(text, vocabulary, merges):
    """Plain-Python BPE: apply the lowest-ranked merge until none applies, word by word."""
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    byte_map = bytes_to_unicode()
    ids = []
    for word in GPT2_SPLIT.findall(text):
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        while len(symbols) > 1:
            pairs = [(ranks.get(p, 1e9), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
            rank, i = min(pairs)
            if rank == 1e9:
                break
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        ids.extend(vocabulary[s] for s in symbols)
    return ids


def test_training_on_a_hand_computed_case():
    # words: "ab", " ab" x2, " c": pairs (a,b) 3, (Ġ,a) 2, (Ġ,c) 1 -> merge "a b" first,
    # then (Ġ, ab) counts 2
    vocabulary, merges = train_bpe("ab ab ab c", 256 + 2 + 1, special_tokens=["<eos>"])
    assert merges == ["a b", "Ġ ab"]
    assert vocabulary["ab"] == 256 and vocabulary["Ġab"] == 257 and vocabulary["<eos>"] == 258


def test_trained_tokenizer_matches_plain_python_bpe(tokenizer):
    assert tokenizer.vocabulary_size() == 600
    text = "KING RICHARD III:\nNow is the winter of our discontent, 1592 — déjà vu!"
    ids = tokenizer.tokenize(text)
    assert ids.dtype == tf.int32 and ids.shape.rank == 1
    assert ids.numpy().tolist() == reference_encode(text, tokenizer.vocabulary, tokenizer.merges)
    assert tokenizer.detokenize(ids).numpy().decode("utf-8") == text
    assert len(ids) < len(text.encode("utf-8"))  # it compresses


def test_overlapping_pairs_merge_left_to_right():
    # "a a" merges first; in "aaaaa" its occurrences overlap: GPT-2 takes them left to right
    # (aa aa a), then "aa aa" joins the first two
    vocabulary = {s: i for i, s in enumerate(bytes_to_unicode()[b] for b in range(256))}
    vocabulary.update({"aa": 256, "aaaa": 257, "<|endoftext|>": 258})
    tokenizer = BPETokenizer(vocabulary, ["a a", "aa aa"])
    rows = tokenizer.tokenize(["aaaaa", "aaa", "aa aaaaaaa"]).to_list()
    assert rows == [[257, 97], [256, 97], [256, vocabulary["Ġ"], 257, 256, 97]]
    for text, row in zip(["aaaaa", "aaa", "aa aaaaaaa"], rows):
        assert row == reference_encode(text, vocabulary, ["a a", "aa aa"])


def test_ids_are_those_of_transformers_gpt2_tokenizer(multilingual):
    tokenizer, reference = multilingual
    byte_of = {symbol: byte for byte, symbol in bytes_to_unicode().items()}

    def is_partial_character(token):
        try:
            bytes(byte_of[c] for c in token).decode("utf-8")
            return False
        except (UnicodeDecodeError, KeyError):
            return "<" not in token

    # the vocabulary merges bytes inside multi-byte characters, so those paths are exercised
    assert any(is_partial_character(m.replace(" ", "")) for m in tokenizer.merges)
    texts = CASES + random_texts(seed=0, count=1000)
    rows = tokenizer.tokenize(texts)
    assert isinstance(rows, tf.RaggedTensor) and rows.dtype == tf.int32
    for text, row in zip(texts, rows.to_list()):
        assert row == reference.encode(text, add_special_tokens=False), repr(text)
    for text in CASES:  # one string at a time gives the same
        expected = reference.encode(text, add_special_tokens=False)
        assert tokenizer.tokenize(text).numpy().tolist() == expected
    long = tokenizer.tokenize(CASES[-1])
    assert len(long) > 1024 and tokenizer.detokenize(long).numpy().decode() == CASES[-1]


def test_an_exported_tokenizer_gives_the_reference_ids_in_core_tensorflow(multilingual, tmp_path):
    tokenizer, reference = multilingual
    export_tokenizer(tokenizer, tmp_path / "1")
    texts = CASES + random_texts(seed=2, count=200)
    rows = run_in_core_tensorflow(f"""
        import json
        import tensorflow as tf
        out = tf.saved_model.load({str(tmp_path / "1")!r}).signatures["tokenize"](texts=tf.constant({texts!r}))
        print(json.dumps(tf.RaggedTensor.from_row_splits(out["ids"], out["splits"]).to_list()))
    """)
    assert rows == [reference.encode(text, add_special_tokens=False) for text in texts]


def test_special_tokens_in_text_are_their_ids_and_boundaries(multilingual):
    tokenizer, _ = multilingual
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = tokenizer.tokenize(["to be<|endoftext|>or<pad>", "to be", "or"]).to_list()
    assert ids[0] == ids[1] + [eos] + ids[2] + [pad]
    assert tokenizer.detokenize([eos, pad]).numpy() == b"<|endoftext|><pad>"


def test_detokenize_gives_back_any_unicode_text(multilingual):
    tokenizer, _ = multilingual
    texts = random_texts(seed=1, count=500) + CASES
    decoded = tokenizer.detokenize(tokenizer.tokenize(texts)).numpy()
    assert [d.decode("utf-8") for d in decoded] == texts
    with pytest.raises(tf.errors.InvalidArgumentError, match="at or above the vocabulary size 800"):
        tokenizer.detokenize([5, 800])


def test_graph_uses_only_core_tensorflow_ops(tokenizer):
    # tensorflow-text's ops are not in tf.raw_ops; a cache would need a mutable table
    types = graph_op_types(tokenizer.tokenize, tf.TensorSpec([None], tf.string))
    types |= graph_op_types(tokenizer.detokenize, tf.RaggedTensorSpec([None, None], tf.int32))
    assert {"StaticRegexReplace", "While", "LookupTableFindV2"} <= types
    assert sorted(t for t in types if t not in dir(tf.raw_ops)) == []
    assert [t for t in types if "Mutable" in t or "Insert" in t] == []


def test_output_is_dense_for_a_string_and_ragged_for_a_batch(tokenizer):
    ids = tokenizer.tokenize(["to be", "or  "])  # equal lengths stay ragged
    assert isinstance(ids, tf.RaggedTensor) and ids.dtype == tf.int32
    assert ids.row_splits.dtype == tf.int64  # as the other tokenizers' (ragged ops need them alike)
    assert tokenizer.tokenize(tf.constant([], tf.string)).shape.as_list() == [0, None]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def batch(texts):
        return tokenizer.tokenize(texts)

    assert batch(tf.constant(["to be", "or  "])).to_list() == ids.to_list()
    single = tf.function(tokenizer.tokenize)(tf.constant("to be"))
    assert isinstance(single, tf.Tensor) and single.numpy().tolist() == ids[0].numpy().tolist()
    with pytest.raises(ValueError, match="a batch"):
        tokenizer.tokenize([["a"]])


def test_training_is_deterministic(tokenizer):
    again = BPETokenizer.train(SHAKESPEARE, vocabulary_size=600)
    assert again.merges == tokenizer.merges and again.vocabulary == tokenizer.vocabulary


def test_gpt2_style_files_load_as_they_are(tokenizer, tmp_path):
    tokenizer.save_vocabulary(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text())["<|endoftext|>"] == 599
    lines = (tmp_path / "merges.txt").read_text().split("\n")
    assert lines[:2] == ["#version: 0.2", tokenizer.merges[0]]
    loaded = BPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    text = "To be, or not to be: that is the question."
    assert loaded.tokenize(text).numpy().tolist() == tokenizer.tokenize(text).numpy().tolist()
    assert loaded.eos_token_id == 599 and loaded.merges == tokenizer.merges
    assert loaded.get_vocabulary() == sorted(tokenizer.vocabulary, key=tokenizer.vocabulary.get)
    assert loaded.id_to_token(599) == "<|endoftext|>" and loaded.token_to_id("Ġ") == 32


def test_in_tf_data_and_saved_with_the_model(tokenizer, tmp_path):
    texts = ["to be", "or not", "x"]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
    assert [list(x.numpy()) for x in ds] == [list(np.asarray(tokenizer(t))) for t in texts]
    batches = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(tokenizer.tokenize)
    assert [row for b in batches for row in b.to_list()] == tokenizer.tokenize(texts).to_list()
    model = tiny_gpt(vocab_size=600, tokenizer=tokenizer)
    model(np.zeros((1, 4), "int32"))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras").tokenizer
    assert isinstance(restored, BPETokenizer) and restored.merges == tokenizer.merges
    assert restored.vocabulary == tokenizer.vocabulary
    assert restored.get_config() == tokenizer.get_config()
    assert list(np.asarray(restored("to be"))) == list(np.asarray(tokenizer("to be")))


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="below the 256 byte symbols"):
        train_bpe("abc", vocabulary_size=100)
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe("", vocabulary_size=300)
    vocabulary, merges = train_bpe("abc", 260)
    with pytest.raises(ValueError, match=r"Special token\(s\) \['<\|endoftext\|>'\] are not in"):
        BPETokenizer(vocabulary, merges)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    with pytest.raises(ValueError, match="Merge rule 'a x' is not two vocabulary tokens"):
        BPETokenizer(vocabulary, merges + ["a x"])
    del vocabulary["Ġ"]
    with pytest.raises(ValueError, match=r"lacks the byte symbol\(s\) \['Ġ'\]"):
        BPETokenizer(vocabulary, merges)
    with pytest.raises(ValueError, match="no vocabulary"):
        BPETokenizer().tokenize("abc")
    with pytest.raises(ValueError, match=r"pre_tokenizer='gpt4' is not one of \['gpt2', 'llama3'"):
        BPETokenizer(pre_tokenizer="gpt4")
    with pytest.raises(ValueError, match="normalizer='NFKC' is not None or 'NFC'"):
        BPETokenizer(normalizer="NFKC")
    vocabulary["Ġ"] = 32
    with pytest.raises(ValueError, match=r"Added token\(s\) \['<pad>'\] are not in"):
        BPETokenizer(vocabulary, merges, added_tokens=["<pad>"])
