import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.data.corpora import tiny_shakespeare
from tests.helpers import tiny_gpt
from tflm.models import GPT
from tflm.tokenizers import ByteTokenizer, CharTokenizer


def random_unicode(rng, length):
    """Code points from every plane in use: ASCII, accents, CJK, emoji, combining marks."""
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x4E00, 0x9FFF), (0x1F600, 0x1F64F), (0x10000, 0x1FFFF)]
    chars = []
    for _ in range(length):
        low, high = ranges[rng.integers(len(ranges))]
        code = int(rng.integers(low, high + 1))
        if 0xD800 <= code <= 0xDFFF:
            code = 0x41
        chars.append(chr(code))
    return "".join(chars)


def test_byte_round_trip_is_identity_on_arbitrary_unicode():
    tokenizer = ByteTokenizer()
    rng = np.random.default_rng(0)
    texts = [random_unicode(rng, int(rng.integers(0, 40))) for _ in range(200)] + ["", "\n\t\0"]
    ids = tokenizer.tokenize(tf.constant(texts))
    for text, row in zip(texts, ids):
        assert list(row.numpy()) == list(text.encode("utf-8"))
    decoded = tokenizer.detokenize(ids).numpy()
    assert [d.decode("utf-8") for d in decoded] == texts


def test_byte_special_tokens_follow_the_bytes():
    tokenizer = ByteTokenizer(bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert tokenizer.vocabulary_size() == 259
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (256, 257, 258)
    assert tokenizer.mask_token_id is None
    assert tokenizer.detokenize([104, 105, 257]).numpy() == b"hi</s>"
    # special tokens in text are only bytes: text cannot inject them
    assert max(tokenizer.tokenize("</s>").numpy()) < 256


def test_id_outside_the_vocabulary_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="at or above the vocabulary size 257"):
        ByteTokenizer().detokenize([104, 300])


def test_char_vocabulary_of_tiny_shakespeare_has_65_symbols():
    tokenizer = CharTokenizer.train(tiny_shakespeare().read_text())
    assert tokenizer.vocabulary_size() == 65
    assert tokenizer.get_vocabulary()[:3] == ["\n", " ", "!"]
    text = "ROMEO:\nO, she doth teach the torches to burn bright!"
    ids = tokenizer(text).numpy()
    assert list(ids) == [tokenizer.get_vocabulary().index(c) for c in text]
    assert tokenizer.detokenize(ids).numpy().decode() == text
    assert GPT.from_preset("shakespeare-char").tokenizer.get_vocabulary() == tokenizer.get_vocabulary()


def test_char_unknown_character_is_an_error_or_unk():
    tokenizer = CharTokenizer.train("abc")
    with pytest.raises(tf.errors.InvalidArgumentError, match="not in the CharTokenizer's vocabulary"):
        tokenizer("abz")
    with_unk = CharTokenizer.train("abc", unk_token="<unk>")
    assert list(with_unk("abz").numpy()) == [0, 1, 3]
    with pytest.raises(ValueError, match="empty corpus"):
        CharTokenizer.train("")
    with pytest.raises(ValueError, match="must not repeat"):
        CharTokenizer("aba")


@pytest.mark.parametrize("tokenizer", [ByteTokenizer(), CharTokenizer.train("hello world")])
def test_works_in_tf_data_and_in_a_graph(tokenizer):
    ds = tf.data.Dataset.from_tensor_slices(["hello", "world"]).map(tokenizer.tokenize)
    rows = [list(x.numpy()) for x in ds]
    assert rows == [list(tokenizer("hello").numpy()), list(tokenizer("world").numpy())]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(texts):
        return tokenizer.detokenize(tokenizer.tokenize(texts))

    assert list(round_trip(tf.constant(["hello", "low"])).numpy()) == [b"hello", b"low"]


def test_saved_with_the_model(tmp_path):
    tokenizer = CharTokenizer.train("abcdef", eos_token="<eos>")
    model = tiny_gpt(vocab_size=7, tokenizer=tokenizer)
    model(np.zeros((1, 4), "int32"))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras").tokenizer
    assert restored.get_config() == tokenizer.get_config()
    assert restored.eos_token_id == 6
    assert list(restored("fab").numpy()) == [5, 0, 1]


def test_a_tokenizer_that_does_not_fit_the_vocabulary_is_one_error_for_models_and_data():
    from tflm.data import lm_dataset

    tokenizer = CharTokenizer.train("abcdef", eos_token="<eos>")  # 7 tokens
    message = r"The tokenizer \(CharTokenizer\) has 7 tokens but the model's vocabulary has 8"
    with pytest.raises(ValueError, match=message):
        tiny_gpt(vocab_size=8, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=message):
        lm_dataset(["abcdef"], tokenizer, 4, 1, model=tiny_gpt(vocab_size=8))
