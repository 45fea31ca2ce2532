import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.data.corpora import tiny_shakespeare
from tests.helpers import tiny_gpt
from tflm.tokenizers import BPETokenizer, train_bpe
from tflm.tokenizers.bpe import GPT2_SPLIT, bytes_to_unicode

SHAKESPEARE = tiny_shakespeare().read_text()[:200_000]


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(SHAKESPEARE, vocabulary_size=600)


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
    vocabulary, merges = train_bpe("ab ab ab c", vocabulary_size=256 + 2 + 1, special_tokens=["<eos>"])
    assert merges == ["a b", "Ġ ab"]
    assert vocabulary["ab"] == 256 and vocabulary["Ġab"] == 257 and vocabulary["<eos>"] == 258


def test_trained_tokenizer_matches_plain_python_bpe(tokenizer):
    assert tokenizer.vocabulary_size() == 600
    text = "KING RICHARD III:\nNow is the winter of our discontent, 1592 — déjà vu!"
    ids = np.asarray(tokenizer(text)).tolist()
    assert ids == reference_encode(text, tokenizer.vocabulary, tokenizer.merges)
    assert tokenizer.detokenize(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # it compresses


def test_training_is_deterministic(tokenizer):
    again = BPETokenizer.train(SHAKESPEARE, vocabulary_size=600)
    assert again.merges == tokenizer.merges and again.vocabulary == tokenizer.vocabulary


def test_gpt2_style_files_load_as_they_are(tokenizer, tmp_path):
    tokenizer.save_vocabulary(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text())["<|endoftext|>"] == 599
    loaded = BPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    text = "To be, or not to be: that is the question."
    assert list(np.asarray(loaded(text))) == list(np.asarray(tokenizer(text)))
    assert loaded.eos_token_id == 599


def test_in_tf_data_and_saved_with_the_model(tokenizer, tmp_path):
    ds = tf.data.Dataset.from_tensor_slices(["to be", "or not"]).map(tokenizer.tokenize)
    assert [list(x.numpy()) for x in ds] == [list(np.asarray(tokenizer(t))) for t in ["to be", "or not"]]
    model = tiny_gpt(vocab_size=600, tokenizer=tokenizer)
    model(np.zeros((1, 4), "int32"))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras").tokenizer
    assert restored.merges == tokenizer.merges
    assert list(np.asarray(restored("to be"))) == list(np.asarray(tokenizer("to be")))


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="below the 256 byte symbols"):
        train_bpe("abc", vocabulary_size=100)
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe("", vocabulary_size=300)
    vocabulary, merges = train_bpe("abc", 260)
    with pytest.raises(ValueError, match=r"Special token\(s\) \['<\|endoftext\|>'\] are not in"):
        BPETokenizer(vocabulary, merges)
