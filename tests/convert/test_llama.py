"""Llama-family checkpoints (Llama, Mistral, Qwen2) import into GPTs that compute, greedily
decode and beam-search exactly as transformers does on the same weights."""

import json
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tflm.convert import from_huggingface
from tflm.generation import Beam
from tflm.models import GPT

SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
# One small random model of each family, each covering options the others do not.
FAMILIES = {
    # Llama 3's RoPE scaling (an original context of 64 puts the frequencies of a 16-wide
    # head in all three of its bands), grouped-query heads, heads wider than
    # hidden / heads, an output head of its own.
    "llama": dict(
        config=dict(SIZES, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                    rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                         low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=64))),
    # multi-query attention, a sliding window shorter than prompt + completion, tied
    # embeddings, another RoPE base; written in shards
    "mistral": dict(
        config=dict(SIZES, num_key_value_heads=1, sliding_window=8, tie_word_embeddings=True,
                    rope_parameters=dict(rope_type="default", rope_theta=1000.0)),
        max_shard_size="40KB"),
    # biases on q, k and v only, tied embeddings; written in bfloat16
    "qwen2": dict(
        config=dict(SIZES, num_key_value_heads=2, tie_word_embeddings=True),
        dtype="bfloat16"),
}
IDS = np.random.default_rng(0).integers(0, 96, (2, 20)).tolist()
PROMPTS = [[5, 17, 33], [60, 2, 90, 11, 41, 7, 7], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]
NEW_TOKENS = 12
NUM_BEAMS = 3

# transformers runs in a subprocess (torch and TensorFlow in one process can crash): it
# writes every family's checkpoint, loads it back as saved and computes the references.
REFERENCE = textwrap.dedent("""
    import json, sys
    import torch
    import transformers

    job = json.loads(sys.argv[1])
    out = {}
    for kind, spec in job["families"].items():
        torch.manual_seed(0)
        config = transformers.AutoConfig.for_model(kind, **spec["config"])
        model = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # every weight random, norms around 1 and biases too
            for name, parameter in model.named_parameters():
                parameter.normal_(1.0 if "norm" in name else 0.0, 0.15)
        model.to(getattr(torch, spec.get("dtype", "float32")))
        directory = f"{job['directory']}/{kind}"
        model.save_pretrained(directory, max_shard_size=spec.get("max_shard_size", "50GB"))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, attn_implementation="eager").eval()
        # no end token: every row decodes all its new tokens, on both sides
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        options = dict(max_new_tokens=job["new_tokens"], do_sample=False)
        with torch.no_grad():
            logits = model(torch.tensor(job["ids"])).logits.tolist()
            def continuations(**settings):
                return [model.generate(torch.tensor([p]), **options, **settings)[0, len(p):].tolist()
                        for p in job["prompts"]]
            greedy = continuations()
            # with no end token every hypothesis has the same length, so the length
            # penalty cannot reorder them (tflm's and transformers' beams differ in how
            # they keep finished hypotheses: see test_beam_search_matches_transformers)
            beam = continuations(num_beams=job["num_beams"], num_return_sequences=1,
                                 length_penalty=1.0, early_stopping=False)
        out[kind] = {"logits": logits, "greedy": greedy, "beam": beam}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """`(directory, references)`: a checkpoint directory per family under `directory`,
    and transformers' logits, greedy and beam continuations of each."""
    directory = tmp_path_factory.mktemp("llama_family")
    job = dict(families=FAMILIES, directory=str(directory), ids=IDS, prompts=PROMPTS,
               new_tokens=NEW_TOKENS, num_beams=NUM_BEAMS)
    result = subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(job)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return directory, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def imported(checkpoints):
    directory, _ = checkpoints
    return {kind: from_huggingface(directory / kind) for kind in FAMILIES}


def test_the_checkpoints_are_what_the_tests_claim(checkpoints, imported):
    """Shards, bfloat16 and the options each family stands for reach the imported GPTs."""
    from safetensors import safe_open

    directory, _ = checkpoints
    assert (directory / "mistral" / "model.safetensors.index.json").is_file()
    assert len(list((directory / "mistral").glob("model-*.safetensors"))) > 1
    with safe_open(str(directory / "qwen2" / "model.safetensors"), "numpy") as f:
        assert f.get_slice("model.layers.0.self_attn.q_proj.bias").get_dtype() == "BF16"
    llama, mistral, qwen2 = imported["llama"], imported["mistral"], imported["qwen2"]
    assert (llama.head_dim, llama.num_kv_heads, llama.tie_embeddings) == (16, 2, False)
    assert llama.rope_scaling["rope_type"] == "llama3"
    assert (mistral.sliding_window, mistral.num_kv_heads, mistral.tie_embeddings) == (8, 1, True)
    assert mistral.rope_max_wavelength == 1000.0
    assert (qwen2.use_bias, qwen2.qkv_bias, qwen2.tie_embeddings) == (False, True, True)
    for model in imported.values():
        assert isinstance(model, GPT) and model.position == "rotary"


@pytest.mark.parametrize("kind", FAMILIES)
def test_logits_match_transformers(kind, checkpoints, imported):
    expected = np.array(checkpoints[1][kind]["logits"])
    logits = keras.ops.convert_to_numpy(imported[kind](np.array(IDS, "int32")))
    assert np.abs(logits - expected).max() <= 1e-4


@pytest.mark.parametrize("kind", FAMILIES)
def test_greedy_generation_matches_transformers(kind, checkpoints, imported):
    """Prompts of three lengths in one batch here, one at a time in transformers."""
    expected = checkpoints[1][kind]["greedy"]
    assert imported[kind].generate(PROMPTS, max_new_tokens=NEW_TOKENS) == expected
    assert len({tuple(row) for row in expected}) == len(PROMPTS)  # the prompts matter
    # a stop token ends a row where transformers' continuation first has it
    stop = expected[1][4]
    cut = [row[: row.index(stop)] if stop in row else row for row in expected]
    assert imported[kind].generate(PROMPTS, max_new_tokens=NEW_TOKENS, stop_tokens=[stop]) == cut


@pytest.mark.parametrize("kind", FAMILIES)
def test_beam_search_matches_transformers(kind, checkpoints, imported):
    """Without an end token, both keep the `num_beams` best-scoring continuations at every
    step and return the best at the end: the same search. (With one they differ: a
    finished hypothesis keeps its place among tflm's beams, while transformers sets it
    aside and keeps `num_beams` running, so they can end on different hypotheses.)"""
    expected = checkpoints[1][kind]["beam"]
    beams = imported[kind].generate(PROMPTS, max_new_tokens=NEW_TOKENS, sampler=Beam(NUM_BEAMS))
    assert beams == expected
    assert beams != checkpoints[1][kind]["greedy"]  # a search that greedy does not repeat


def copy_checkpoint(source, directory, config_changes=None, add_tensors=None):
    """A copy of the one-file checkpoint `source` with config.json updated and tensors added."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    if add_tensors:
        tensors = load_file(str(directory / "model.safetensors"))
        save_file({**tensors, **add_tensors}, str(directory / "model.safetensors"))
    return directory


def test_older_configs_and_rope_buffers_import(checkpoints, imported, tmp_path):
    """transformers 4's spelling (rope_theta and rope_scaling beside the other keys) and the
    inv_freq buffers its older versions saved import to the same model."""
    directory, _ = checkpoints
    config = json.loads((directory / "llama" / "config.json").read_text())
    rope = dict(config.pop("rope_parameters"))
    older = {**config, "rope_theta": rope.pop("rope_theta"), "rope_scaling": rope}
    buffers = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": np.ones(8, "float32")
               for i in range(2)}
    copy = copy_checkpoint(directory / "llama", tmp_path / "older", add_tensors=buffers)
    (copy / "config.json").write_text(json.dumps(older))
    model = from_huggingface(copy)
    config = {**model.get_config(), "name": None}
    assert config == {**imported["llama"].get_config(), "name": None}
    ids = np.array(IDS, "int32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(ids)),
                                  keras.ops.convert_to_numpy(imported["llama"](ids)))


@pytest.mark.parametrize("change,error", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "RoPE scaling 'yarn' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     "'llama3' needs low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    ({"hidden_act": "gelu"}, "Unsupported hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias=True with mlp_bias=False has no tflm counterpart"),
    ({"quantization_config": {"quant_method": "awq"}}, r"quantized checkpoint \(awq\)"),
])
def test_options_without_a_counterpart_are_errors_naming_them(checkpoints, tmp_path, change, error):
    directory = copy_checkpoint(checkpoints[0] / "llama", tmp_path / "changed", change)
    with pytest.raises(ValueError, match=error):
        from_huggingface(directory)


def test_qwen2_sliding_windows_on_some_layers_only_are_refused(checkpoints, tmp_path):
    change = {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1,
              "layer_types": ["full_attention", "sliding_attention"]}
    directory = copy_checkpoint(checkpoints[0] / "qwen2", tmp_path / "qwen2", change)
    with pytest.raises(ValueError, match="mixes sliding-window and full attention"):
        from_huggingface(directory)
    # a window on every layer is Mistral's, and one as long as the context is none
    everywhere = {**change, "max_window_layers": 0, "layer_types": ["sliding_attention"] * 2}
    directory = copy_checkpoint(checkpoints[0] / "qwen2", tmp_path / "all", everywhere)
    assert from_huggingface(directory).sliding_window == 8
    directory = copy_checkpoint(checkpoints[0] / "qwen2", tmp_path / "long",
                                {**everywhere, "sliding_window": 64})
    assert from_huggingface(directory).sliding_window is None


def test_extra_and_missing_tensors_are_errors_naming_them(checkpoints, tmp_path):
    directory = checkpoints[0]
    extra = {"model.layers.2.mlp.down_proj.weight": np.zeros((32, 48), "float32")}
    with pytest.raises(ValueError, match=r"does not use: 'model.layers.2.mlp.down_proj.weight'"):
        from_huggingface(copy_checkpoint(directory / "llama", tmp_path / "extra", add_tensors=extra))
    # a tied model must not carry a head of its own
    head = {"lm_head.weight": np.ones((96, 32), "float32")}
    with pytest.raises(ValueError, match="lm_head.weight differs from embed_tokens.weight"):
        from_huggingface(copy_checkpoint(directory / "qwen2", tmp_path / "head", add_tensors=head))
    shard = directory / "mistral"
    index = json.loads((shard / "model.safetensors.index.json").read_text())
    missing = tmp_path / "missing"
    shutil.copytree(shard, missing)
    (missing / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(FileNotFoundError, match="has no model-00"):
        from_huggingface(missing)
