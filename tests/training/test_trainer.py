"""`tflm train` as a user runs it: in a subprocess, killed, terminated and resumed."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import ROOT


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def texts(log_dir, tag):
    found = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = tf.make_ndarray(value.tensor).item().decode()
    return found


@pytest.fixture(scope="module")
def uninterrupted(tflm_train, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    result = tflm_train.run(output, "output.sample_every=30", "output.sample_prompt=ROMEO:")
    assert result.returncode == 0, result.stderr
    return output, result


def test_a_run_writes_logs_checkpoints_config_and_model(uninterrupted, scalars):
    output, result = uninterrupted
    assert "Trained to step 45" in result.stdout and "validation loss" in result.stdout
    assert (output / "model.keras").is_file() and (output / "config.yaml").is_file()
    assert sorted(p.name for p in (output / "checkpoints").glob("ckpt-*")) == [
        "ckpt-000000030", "ckpt-000000040", "ckpt-000000045"]
    losses = scalars(output / "logs" / "train", "loss")
    assert sorted(losses) == list(range(1, 46))
    assert losses[45] < losses[1]
    assert set(scalars(output / "logs" / "validation", "loss")) == {15, 30, 45}
    assert set(scalars(output / "logs" / "train", "tokens_per_second")) == set(range(2, 46))
    learning_rates = scalars(output / "logs" / "train", "learning_rate")
    assert learning_rates[1] == pytest.approx(3e-3 / 5, rel=1e-4)  # warmup, then a cosine
    assert learning_rates[5] == pytest.approx(3e-3, rel=1e-4) and learning_rates[45] < 4e-4
    samples = texts(output / "logs" / "samples", "sample")
    assert list(samples) == [30] and samples[30].startswith("ROMEO:")
    assert "ROMEO:" in result.stdout.split("validation loss")[-1]  # the final sample
    # the saved model evaluates from the shell
    from tflm.data.corpora import tiny_shakespeare

    text = tiny_shakespeare().read_text()[-20_000:]
    sample = output / "sample.txt"
    sample.write_text(text)
    result = subprocess.run([sys.executable, "-m", "tflm", "eval", "--model",
                             str(output / "model.keras"), str(sample), "--seq-len", "32"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "nats per token, perplexity" in result.stdout


def test_killed_and_restarted_it_continues_with_the_same_losses(uninterrupted, tflm_train,
                                                               scalars, tmp_path):
    reference = scalars(uninterrupted[0] / "logs" / "train", "loss")
    process = tflm_train.start(tmp_path)
    wait_for(tmp_path / "checkpoints" / "ckpt-000000020", process)
    process.send_signal(signal.SIGKILL)  # no chance to save anything
    process.wait()
    assert not (tmp_path / "model.keras").exists()

    result = tflm_train.run(tmp_path)
    assert result.returncode == 0, result.stderr
    resumed_at = int(result.stdout.split("Resuming from checkpoint at step ")[1].split(" ")[0])
    assert 20 <= resumed_at < 45
    losses = scalars(tmp_path / "logs" / "train", "loss")
    assert sorted(losses) == list(range(1, 46))
    for step in range(resumed_at + 1, 46):
        assert losses[step] == pytest.approx(reference[step], abs=1e-5), step
    np.testing.assert_allclose(
        [scalars(tmp_path / "logs" / "validation", "loss")[s] for s in (30, 45)],
        [scalars(uninterrupted[0] / "logs" / "validation", "loss")[s] for s in (30, 45)],
        atol=1e-5)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tflm_train, tmp_path):
    process = tflm_train.start(tmp_path)
    wait_for(tmp_path / "checkpoints" / "ckpt-000000010", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "Stopped by SIGTERM at step" in output
    step = int(output.split("Stopped by SIGTERM at step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / f"ckpt-{step:09d}").is_dir()
    assert not (tmp_path / "model.keras").exists()
    result = tflm_train.run(tmp_path)
    assert f"Resuming from checkpoint at step {step} (epoch " in result.stdout
    assert "Trained to step 45" in result.stdout


def test_a_second_trainer_on_the_same_directory_fails_at_once(tflm_train, tmp_path):
    process = tflm_train.start(tmp_path)
    try:
        wait_for(tmp_path / "checkpoints" / ".lock", process)
        began = time.time()
        result = tflm_train.run(tmp_path)
        assert result.returncode != 0
        assert "is in use by another trainer" in result.stderr
        assert time.time() - began < 60
    finally:
        process.kill()
        process.wait()


def test_init_from_continues_training_a_saved_model(uninterrupted, tflm_train, scalars,
                                                    tmp_path):
    from tflm.training import load_config, train

    overrides = tflm_train.overrides(tmp_path, "train.max_steps=15", "output.sample_prompt=",
                                     f"model.init_from={uninterrupted[0] / 'model.keras'}")
    result = train(load_config(overrides=overrides), print_fn=lambda *_: None)
    first = scalars(tmp_path / "logs" / "train", "loss")[1]
    fresh = scalars(uninterrupted[0] / "logs" / "train", "loss")
    assert first < fresh[1] - 0.5 and first == pytest.approx(fresh[45], abs=0.3)
    assert result.step == 15


@pytest.mark.parametrize("setting, error", [
    ("model.init_from={missing}", "No pretrained model at"),
    ("data.train={missing}", "Corpus file not found"),
])
def test_a_missing_input_is_an_error_before_anything_is_written(setting, error, tflm_train,
                                                                tmp_path):
    from tflm.training import load_config, train

    output = tmp_path / "run"
    missing = tmp_path / "missing.keras"
    overrides = tflm_train.overrides(output, setting.format(missing=missing))
    with pytest.raises(FileNotFoundError, match=error):
        train(load_config(overrides=overrides), print_fn=lambda *_: None)
    assert not output.exists()


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_in_half_precision_with_float32_weights(policy, tflm_train,
                                                                      tmp_path):
    import keras

    from tflm.training import load_config, train

    overrides = tflm_train.overrides(tmp_path, "train.max_steps=15", "output.sample_prompt=",
                                     f"train.mixed_precision={policy}")
    result = train(load_config(overrides=overrides), print_fn=lambda *_: None)
    assert keras.config.dtype_policy().name == "float32"  # put back afterwards
    model = result.model
    assert model.dtype_policy.name == policy
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert np.isfinite(result.val_loss) and result.val_loss < 4.0
    is_loss_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_loss_scaled == (policy == "mixed_float16")


def test_the_lstm_block_trains_from_the_default_config(tflm_train, tmp_path):
    # the default config spells out the transformer's settings too; an LSTM GPT takes none
    result = tflm_train.run(tmp_path / "run", "model.block=lstm", "model.position=sinusoidal",
                            "train.max_steps=15")
    assert result.returncode == 0, result.stderr
    import keras

    import tflm.tokenizers  # noqa: F401  (registers the tokenizer classes)

    model = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    assert model.block == "lstm" and "num_heads" not in model.get_config()
