"""Exports load with TensorFlow alone and answer as the library does."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tflm
from tests.helpers import ROOT, run_in_core_tensorflow
from tflm.export import saved_model

PROMPTS = ["ROMEO:", "JULIET: O Romeo, Romeo", "\n"]


@pytest.fixture(scope="module")
def gpt_export(gpt, tmp_path_factory):
    return saved_model(gpt, tmp_path_factory.mktemp("exports") / "shakespeare", max_new_tokens=12)


def generate_inputs(n, max_new_tokens, temperature, top_k, top_p, seed):
    return dict(max_new_tokens=[max_new_tokens] * n, temperature=[temperature] * n,
                top_k=[top_k] * n, top_p=[top_p] * n, seed=[seed] * n)


def test_gpt_export_matches_the_library_in_a_process_without_tflm(gpt, gpt_export):
    settings = {  # name: (signature inputs, the same as a library sampler)
        "greedy": (generate_inputs(3, 12, 0.0, 0, 1.0, 0), dict(sampler="greedy")),
        "top_k": (generate_inputs(3, 10, 0.8, 5, 1.0, 7), dict(sampler="top_k", k=5, temperature=0.8, seed=7)),
        "top_p": (generate_inputs(3, 10, 1.0, 0, 0.9, 3), dict(sampler="top_p", p=0.9, seed=3)),
    }
    token_ids = np.random.default_rng(0).integers(0, 65, (2, 9)).astype("int32")
    outputs = run_in_core_tensorflow(f"""
        import json
        import tensorflow as tf
        model = tf.saved_model.load({str(gpt_export)!r})
        prompts = tf.constant({PROMPTS!r})
        results = {{"default": [t.decode() for t in model.signatures["serving_default"](prompts=prompts)["completions"].numpy()]}}
        for name, inputs in {json.dumps({k: v[0] for k, v in settings.items()})}.items():
            inputs = {{k: tf.constant(v, tf.float32 if k in ("temperature", "top_p") else tf.int32) for k, v in inputs.items()}}
            out = model.signatures["generate"](prompts=prompts, **inputs)["completions"]
            results[name] = [t.decode() for t in out.numpy()]
        results["logits"] = model.signatures["logits"](token_ids=tf.constant({token_ids.tolist()!r}))["logits"].numpy().tolist()
        print(json.dumps(results))
    """)
    assert outputs["default"] == gpt.generate(PROMPTS, 12)
    assert outputs["greedy"] == gpt.generate(PROMPTS, 12)
    for name in ("top_k", "top_p"):  # a row with its own seed samples as that prompt alone
        inputs, sampler = settings[name]
        assert outputs[name] == [gpt.generate([p], inputs["max_new_tokens"][0], **sampler)[0]
                                 for p in PROMPTS], name
    np.testing.assert_allclose(outputs["logits"], keras.ops.convert_to_numpy(gpt(token_ids)), atol=1e-5)


def test_generate_tokens_in_steps_produces_what_generate_does(gpt, gpt_export):
    """The streaming signature, fed back its own ids a few at a time, for three prompts at once."""
    model = tf.saved_model.load(str(gpt_export))
    n, budget = len(PROMPTS), 20
    settings = {k: tf.constant(v) for k, v in generate_inputs(n, budget, 1.0, 0, 0.9, 3).items()}
    generated, text, done, calls = [[] for _ in PROMPTS], [b""] * n, np.zeros(n, bool), 0
    while not done.all():
        steps = min(1 << calls, budget - max(map(len, generated)))  # 1, 2, 4, 8, then the rest
        token_ids = tf.ragged.constant(generated, tf.int32, inner_shape=()).to_tensor(-1)
        out = model.signatures["generate_tokens"](
            prompts=tf.constant(PROMPTS), token_ids=token_ids, steps=tf.fill([n], steps), **settings)
        for i in np.flatnonzero(~done):
            generated[i] += [t for t in out["token_ids"].numpy()[i].tolist() if t >= 0]
            text[i] += out["text"].numpy()[i]
        done |= out["done"].numpy()
        calls += 1
    expected = model.signatures["generate"](prompts=tf.constant(PROMPTS), **settings)["completions"]
    assert text == expected.numpy().tolist() and calls > 3
    assert [gpt.tokenizer.detokenize(ids) for ids in generated] == text
    bad = dict(prompts=tf.constant(PROMPTS[:1]), **{k: v[:1] for k, v in settings.items()})
    for token_ids, steps, message in [([[1] * 19], [2], "token_ids and steps exceed max_new_tokens"),
                                      ([[-1]], [0], "steps must be at least 1"),
                                      ([[65, -1]], [1], "not below the vocabulary size 65")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            model.signatures["generate_tokens"](**bad, token_ids=tf.constant(token_ids),
                                                steps=tf.constant(steps))


def test_a_model_not_yet_built_is_built_and_exported(gpt, tmp_path):
    model = tflm.GPT(**{**gpt.get_config(), "name": "fresh"})
    assert not model.built
    path = saved_model(model, tmp_path / "fresh", warmup_batch_size=0)
    logits = tf.saved_model.load(str(path)).signatures["logits"](token_ids=tf.constant([[1, 2]]))
    np.testing.assert_allclose(logits["logits"], keras.ops.convert_to_numpy(model(np.array([[1, 2]]))),
                               atol=1e-5)


def test_versions_count_up_and_are_never_overwritten(gpt, tmp_path):
    base = tmp_path / "model"
    assert saved_model(gpt, base) == base / "1"
    assert saved_model(gpt, base) == base / "2"
    assert saved_model(gpt, base, version=7) == base / "7"
    with pytest.raises(FileExistsError, match="never overwritten"):
        saved_model(gpt, base, version=2)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "7"]  # no temporary folders


def test_saved_model_cli_lists_the_signatures(gpt_export):
    result = subprocess.run(["saved_model_cli", "show", "--dir", str(gpt_export), "--all"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("serving_default", "generate", "generate_tokens", "logits"):
        assert f"signature_def['{name}']" in result.stdout
    for name in ("prompts", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                 "completions", "token_ids"):
        assert f"['{name}'] tensor_info" in result.stdout


def test_long_prompts_are_cut_and_bad_settings_are_errors(gpt, gpt_export):
    model = tf.saved_model.load(str(gpt_export))
    long = "ROMEO: " * 20  # 140 characters, context 48
    out = model.signatures["serving_default"](prompts=tf.constant([long]))["completions"]
    room = 48 - 12
    assert out.numpy()[0].decode() == gpt.generate(long[-room:], 12)
    inputs = {k: tf.constant(v) for k, v in generate_inputs(1, 10, 1.0, 0, 1.0, 0).items()}
    for name, value, message in [("top_p", [0.0], "top_p must be above 0"),
                                 ("max_new_tokens", [48], "below the context of 48"),
                                 ("top_k", [-1], "top_k must be at least 0"),
                                 ("prompts", [""], "a prompt is empty")]:  # no EOS to start from
        bad = {"prompts": tf.constant(["ROMEO:"]), **inputs}
        bad[name] = tf.constant(value, bad[name].dtype)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            model.signatures["generate"](**bad)


def test_export_from_the_shell(gpt, tmp_path):
    gpt.save(tmp_path / "model.keras")
    result = subprocess.run([sys.executable, "-m", "tflm", "export", "--model", str(tmp_path / "model.keras"),
                             "--name", "shakespeare", "--base-path", str(tmp_path / "saved"),
                             "--warmup-batch-size", "1", "--check"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "saved" / "shakespeare" / "1" / "saved_model.pb").is_file()
    assert "all in core TensorFlow; loads and answers 4 warm-up requests" in result.stdout
    result = subprocess.run([sys.executable, "-m", "tflm", "export", "--model", str(tmp_path / "model.keras"),
                             "--name", "../escape", "--base-path", str(tmp_path / "saved")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0 and "a model name is" in result.stderr
