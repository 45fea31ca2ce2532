"""tflm -> Hugging Face -> transformers computes what tflm computes, with the same token ids."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tflm
from tests.helpers import ROOT
from tflm.convert import to_huggingface
from tflm.models import GPT, Encoder
from tflm.tokenizers import BPETokenizer, WordPieceTokenizer

TEXTS = ["To be, or not to be: that is the question.", "O Romeo, Romeo!\nwherefore art thou", "a"]

# transformers runs in a subprocess: torch and TensorFlow in one process can crash.
REFERENCE = textwrap.dedent("""
    import json, sys
    import torch
    import transformers

    out = {}
    for job in json.loads(sys.argv[1]):
        loader = transformers.AutoModelForCausalLM if job["causal"] else transformers.AutoModel
        model = loader.from_pretrained(job["directory"]).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(job["directory"])
        ids = torch.tensor(job["ids"])
        with torch.no_grad():
            if job["causal"]:
                outputs = model(ids).logits
            else:
                outputs = model(ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        out[job["directory"]] = {
            "outputs": outputs.numpy().tolist(), "type": model.config.model_type,
            "ids": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in job["texts"]]}
    print(json.dumps(out))
""")


def reference(jobs):
    result = subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(jobs)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_gpt(**options):
    return GPT(**{"vocab_size": 65, "num_layers": 2, "hidden_dim": 32, "num_heads": 4,
                  "intermediate_dim": 48, "max_sequence_length": 64, **options})


def models():
    """name: (model, whether causal), each with random weights that are not an initializer's."""
    corpus = [" ".join(TEXTS)] * 4 + ["The quick brown fox jumps over the lazy dog."] * 4
    bpe = BPETokenizer.train(corpus, 300)
    char = tflm.GPT.from_preset("shakespeare-char").tokenizer
    wordpiece = WordPieceTokenizer.train(corpus, 120)
    keras.utils.set_random_seed(0)
    cases = {
        "gpt2": (tiny_gpt(vocab_size=bpe.vocabulary_size(), activation="gelu_tanh", tokenizer=bpe), True),
        "llama": (tiny_gpt(position="rotary", norm="rmsnorm", activation="swiglu", use_bias=False,
                           num_kv_heads=2, tie_embeddings=False, rope_max_wavelength=500.0,
                           layer_norm_epsilon=1e-6, tokenizer=char), True),
        "qwen2": (tiny_gpt(position="rotary", norm="rmsnorm", activation="swiglu", use_bias=False,
                           qkv_bias=True, num_kv_heads=1, head_dim=16, tokenizer=char), True),
        "mistral": (tiny_gpt(position="rotary", norm="rmsnorm", activation="swiglu", use_bias=False,
                             num_kv_heads=2, sliding_window=4, tokenizer=char), True),  # ids: 11 long
        "bert": (Encoder(vocab_size=wordpiece.vocabulary_size(), num_layers=2, num_heads=4,
                         hidden_dim=32, intermediate_dim=48, max_sequence_length=64,
                         tokenizer=wordpiece), False),
    }
    for model, causal in cases.values():
        if causal:
            model.build((None, None))
        else:
            model.build({"token_ids": (None, None), "padding_mask": (None, None)})
        rng = np.random.default_rng(1)
        model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    return cases


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("huggingface")
    cases, jobs = models(), []
    for name, (model, causal) in cases.items():
        ids = np.random.default_rng(2).integers(0, model.vocab_size, (2, 11)).tolist()
        if name == "gpt2":  # from the shell: a trained model's way out
            model.save(base / "gpt2.keras")
            command = [sys.executable, "-m", "tflm", "convert", str(base / "gpt2.keras"),
                       "--to-huggingface", str(base / name)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            to_huggingface(model, base / name)
        jobs.append({"directory": str(base / name), "causal": causal, "ids": ids, "texts": TEXTS})
    return cases, jobs, reference(jobs)


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "mistral", "bert"])
def test_transformers_loads_the_export_and_computes_what_tflm_does(exported, name):
    cases, jobs, answers = exported
    (model, causal), job = cases[name], next(j for j in jobs if j["directory"].endswith(name))
    answer = answers[job["directory"]]
    assert answer["type"] == name
    ids = np.array(job["ids"], "int32")
    if causal:
        ours = model(ids)
    else:
        ours = model({"token_ids": ids, "padding_mask": np.ones_like(ids)})["sequence_output"]
    np.testing.assert_allclose(answer["outputs"], keras.ops.convert_to_numpy(ours), atol=1e-4)
    expected = [keras.ops.convert_to_numpy(model.tokenizer.tokenize(text)).tolist() for text in TEXTS]
    assert answer["ids"] == expected


def test_options_without_a_counterpart_are_errors_that_name_them(tmp_path):
    with pytest.raises(ValueError, match="position='sinusoidal'"):
        to_huggingface(tiny_gpt(position="sinusoidal"), tmp_path / "a")
    with pytest.raises(ValueError, match="block='lstm'"):
        to_huggingface(GPT(vocab_size=65, num_layers=1, hidden_dim=16, max_sequence_length=32,
                           block="lstm", position="sinusoidal"), tmp_path / "b")
    with pytest.raises(ValueError, match="use_bias=True"):  # rotary with biases: not Llama's
        to_huggingface(tiny_gpt(position="rotary", norm="rmsnorm", activation="swiglu"), tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        to_huggingface(tiny_gpt(activation="gelu_tanh"), tmp_path / "d")
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("padded", [False, True])
def test_an_export_imports_back_as_the_same_model(exported, padded, tmp_path):
    import shutil

    from tflm.convert import from_huggingface

    cases, jobs, _ = exported
    model, job = cases["gpt2"][0], next(j for j in jobs if j["directory"].endswith("gpt2"))
    directory, tokenizer = shutil.copytree(job["directory"], tmp_path / "gpt2"), model.tokenizer
    if padded:  # a tokenizer.json three tokens short of the embedding's rows, as Qwen2's
        tokenizer = BPETokenizer.train([" ".join(TEXTS)] * 4, model.vocab_size - 3)
        tflm.tokenizers.to_tokenizer_json(tokenizer, directory)
    back = from_huggingface(directory)
    ids = np.array(job["ids"], "int32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(ids)),
                               keras.ops.convert_to_numpy(model(ids)), atol=1e-5)
    for text in TEXTS:
        np.testing.assert_array_equal(back.tokenizer.tokenize(text), tokenizer.tokenize(text))
    if padded:  # the rows past the tokenizer's read as placeholders
        last = model.vocab_size - 1
        assert back.tokenizer.detokenize([last]).numpy() == f"<|padding_{last}|>".encode()


def test_lora_training_from_the_shell_on_an_imported_llama(tmp_path):
    """`tflm train --init-from DIR --set model.lora_rank=4` on a Llama-layout checkpoint:
    only the attention projections move; the saved model has the adapters merged."""
    bpe = BPETokenizer.train([" ".join(TEXTS)] * 4, 280)
    keras.utils.set_random_seed(3)
    model = tiny_gpt(vocab_size=280, position="rotary", norm="rmsnorm", activation="swiglu",
                     use_bias=False, num_kv_heads=2, tokenizer=bpe)
    model.build((None, None))
    to_huggingface(model, tmp_path / "llama")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(TEXTS) * 40)
    settings = ["model.lora_rank=4", "train.max_minutes=null", "train.max_steps=3",
                "train.eval_every=3", "train.eval_batches=1", "output.sample_every=0",
                "output.sample_prompt=", "optimizer.learning_rate=1e-2", "optimizer.warmup_steps=1",
                "data.seq_len=16", "data.batch_size=4", "train.verbose=0", f"data.train={text}",
                f"output.dir={tmp_path / 'run'}"]
    command = [sys.executable, "-m", "tflm", "train", "--init-from", str(tmp_path / "llama"),
               *[arg for s in settings for arg in ("--set", s)]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    assert len(trained.weights) == len(model.weights)  # merged: no adapter variables left
    moved = {w.path.split("/", 1)[1] for w, before in zip(trained.weights, model.weights)
             if not np.allclose(keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(before))}
    assert moved and all(path.endswith(("attention/qkv/kernel", "attention/output/kernel")) for path in moved)
