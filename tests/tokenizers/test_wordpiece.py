import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.data.corpora import tiny_shakespeare
from tflm.models import Classifier, Encoder
from tflm.tokenizers import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "qu", "##ick", "brown", "fox", "."]


def test_loads_a_bert_vocabulary_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    tokenizer = WordPieceTokenizer(str(path))
    assert list(np.asarray(tokenizer("The quick brown fox.")).tolist()) == [5, 6, 7, 8, 9, 10]
    assert list(np.asarray(tokenizer("the zebra")).tolist()) == [5, 1]  # unknown word -> [UNK]
    ids = {name: getattr(tokenizer, f"{name}_token_id") for name in ("pad", "unk", "bos", "eos", "mask")}
    assert ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4}


def test_trains_from_a_corpus():
    lines = tiny_shakespeare().read_text().split("\n")[:3000]
    tokenizer = WordPieceTokenizer.train(lines, vocabulary_size=800)
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:5] == ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]
    assert 400 < len(vocabulary) <= 800
    ids = tokenizer("the king")
    assert tokenizer.unk_token_id not in np.asarray(ids).tolist()
    assert tokenizer.detokenize(ids) == "the king"


def test_in_tf_data_and_saved_with_a_classifier(tmp_path):
    tokenizer = WordPieceTokenizer(VOCAB)
    ds = tf.data.Dataset.from_tensor_slices(["the fox", "brown"]).map(tokenizer.tokenize)
    assert [x.numpy().tolist() for x in ds] == [[5, 9], [8]]
    encoder = Encoder(vocab_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=8,
                      intermediate_dim=16, max_sequence_length=8)
    model = Classifier(encoder, 2, tokenizer=tokenizer)
    model(np.ones((1, 4), "int32"))
    model.save(tmp_path / "c.keras")
    restored = keras.saving.load_model(tmp_path / "c.keras").tokenizer
    assert restored.get_vocabulary() == VOCAB
    assert np.asarray(restored("the quick fox")).tolist() == [5, 6, 7, 9]


def test_missing_special_token_is_an_error():
    with pytest.raises(ValueError, match=r"\['\[MASK\]'\] are not in"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(ValueError, match="empty corpus"):
        WordPieceTokenizer.train(["", " "], vocabulary_size=100)
