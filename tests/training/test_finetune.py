import os
import subprocess
from pathlib import Path
import sys

import keras
import numpy as np
import pytest

from tests.helpers import ROOT, tiny_gpt
from tflm.models import Classifier, Encoder
from tflm.tokenizers import WordPieceTokenizer
from tflm.training.optimizers import LayerDecayAdamW, WarmupLinear, layer_decay_factors

SAMPLE = ROOT / "tests" / "data" / "sst2_sample.tsv"


def test_warmup_then_linear_decay():
    schedule = WarmupLinear(1e-3, total_steps=100, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 4, 9, 10, 55, 99, 100)]
    np.testing.assert_allclose(rates, [1e-4, 5e-4, 1e-3, 1e-3, 5e-4, 1e-3 / 90, 0.0], rtol=1e-5, atol=1e-9)
    assert WarmupLinear.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_layer_decay_moves_lower_layers_less():
    keras.utils.set_random_seed(0)
    encoder = Encoder.from_preset("bert-tiny", vocab_size=20, max_sequence_length=8)
    encoder.build({"token_ids": (None, 8), "padding_mask": (None, 8)})
    factors = layer_decay_factors(encoder, 0.5)
    assert factors[encoder.blocks[-1].weights[0].path] == 0.5
    assert factors[encoder.blocks[0].weights[0].path] == 0.5 ** len(encoder.blocks)
    assert factors[encoder.embedding.weights[0].path] == 0.5 ** (len(encoder.blocks) + 1)
    # the optimizer scales each variable's step by its factor (Adam's first step is lr-sized)
    a, b = keras.Variable(np.zeros(3, "float32"), name="a"), keras.Variable(np.zeros(3, "float32"), name="b")
    optimizer = LayerDecayAdamW({a.path: 0.25}, learning_rate=0.1, weight_decay=0.0)
    optimizer.apply([np.ones(3, "float32"), np.ones(3, "float32")], [a, b])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), -0.025, rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b), -0.1, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from tflm.data.classification import read_labelled

    texts, _ = read_labelled(SAMPLE, "text", "label")
    tokenizer = WordPieceTokenizer.train(texts, 400)
    keras.utils.set_random_seed(0)
    encoder = Encoder.from_preset("bert-tiny", vocab_size=tokenizer.vocabulary_size(),
                                  max_sequence_length=64, tokenizer=tokenizer)
    encoder.build({"token_ids": (None, None), "padding_mask": (None, None)})
    path = tmp_path_factory.mktemp("encoder") / "encoder.keras"
    encoder.save(path)
    return path


def test_finetune_from_the_shell_saves_a_classifier_that_learned(tiny_encoder, tmp_path):
    output = tmp_path / "classifier.keras"
    result = subprocess.run(
        [sys.executable, "-m", "tflm", "finetune", "--pretrained", str(tiny_encoder), "--train",
         str(SAMPLE), "--valid", str(SAMPLE), "--output", str(output), "--epochs", "12",
         "--learning-rate", "1e-3", "--batch-size", "16", "--eval-every", "50", "--seq-len", "64",
         "--layer-decay", "0.9", "--patience", "10", "--log-dir", str(tmp_path / "logs"),
         "--checkpoint-dir", str(tmp_path / "checkpoints")],
        # 150 training steps: optimized code saves more than its compile time costs here
        # (tests/conftest.py turns LLVM's optimizations off for the rest)
        env={**os.environ, "XLA_FLAGS": ""},
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"Saved {output}") == 1
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
    assert list((tmp_path / "checkpoints").iterdir())
    import tflm.tokenizers  # noqa: F401

    classifier = keras.saving.load_model(output, compile=False)
    assert isinstance(classifier, Classifier) and classifier.label_names == ["0", "1"]
    from tflm.data.classification import classification_dataset

    data = classification_dataset(SAMPLE, classifier.tokenizer, seq_len=64, shuffle=False)
    correct = total = 0
    for inputs, labels in data:
        predictions = np.argmax(keras.ops.convert_to_numpy(classifier(inputs)), -1)
        correct += int((predictions == labels.numpy()).sum())
        total += len(predictions)
    assert correct / total > 0.9  # it fits the 200 training phrases (validated on the same file)


def test_a_pretrained_path_that_is_not_an_encoder_is_an_error(tmp_path):
    from tflm.training.finetune import load_encoder

    with pytest.raises(FileNotFoundError, match="No pretrained model at"):
        load_encoder(tmp_path / "nothing.keras")
    gpt = tiny_gpt()
    gpt.build((None, 8))
    gpt.save(tmp_path / "gpt.keras")
    with pytest.raises(ValueError, match="is not an encoder with a tokenizer"):
        load_encoder(tmp_path / "gpt.keras")


class Terminate(keras.callbacks.Callback):
    """Send this process SIGTERM after optimizer step `at`, as a scheduler stopping a job would."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def held_out(seed=0, fraction=0.1):
    """The rows `finetune` holds out for validation without --valid, chosen here as its
    docstring says: a seeded shuffle of the row numbers, the first 10%."""
    import random

    from tflm.data.classification import read_labelled

    texts, labels = read_labelled(SAMPLE, "text", "label")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    held = sorted(order[: int(len(texts) * fraction)])
    return [texts[i] for i in held], [labels[i] for i in held]


def events(log_dir, tag):
    """step -> tensor of each summary `tag` written under `log_dir`."""
    import tensorflow as tf

    found = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = tf.make_ndarray(value.tensor)
    return found


def test_finetune_logs_checkpoints_resumes_exactly_and_shows_a_confusion_matrix(
        tiny_encoder, tmp_path, capsys, scalars):
    import tensorflow as tf

    from tflm.training.finetune import finetune

    # 180 training rows in batches of 16: 12 steps, validated every 5 (three "epochs", 15 steps)
    options = dict(epochs=1, learning_rate=1e-3, batch_size=16, eval_every=5, seq_len=32,
                   patience=10, verbose=0, log_every=1)
    finetune(tiny_encoder, SAMPLE, output=tmp_path / "a" / "c.keras", **options)
    out = capsys.readouterr().out
    logs = tmp_path / "a" / "c-logs"
    assert (tmp_path / "a" / "c.keras").is_file()
    assert [p.name for p in sorted((tmp_path / "a" / "c-checkpoints").glob("ckpt-*"))] == [
        "ckpt-000000010", "ckpt-000000015"]
    losses = scalars(logs / "train", "loss")
    assert sorted(losses) == list(range(1, 16)) and set(scalars(logs / "train", "accuracy")) == set(losses)
    rates = scalars(logs / "train", "learning_rate")  # no warmup (6% of 12 steps), then linear to 0
    for step in range(1, 16):
        assert rates[step] == pytest.approx(1e-3 * max(0, 12 - step) / 12, abs=1e-9)
    assert set(scalars(logs / "validation", "accuracy")) == {5, 10, 15}
    assert set(scalars(logs / "validation", "loss")) == {5, 10, 15}

    # the confusion matrix: the saved classifier's predictions on the held-out rows
    classifier = keras.saving.load_model(tmp_path / "a" / "c.keras", compile=False)
    from tflm.data.classification import classification_dataset

    counts = np.zeros((2, 2), int)
    for inputs, labels in classification_dataset(held_out(), classifier.tokenizer, seq_len=32,
                                                 shuffle=False):
        predicted = np.argmax(keras.ops.convert_to_numpy(classifier(inputs)), -1)
        for true, guess in zip(labels.numpy(), predicted):
            counts[true, guess] += 1
    assert counts.sum() == 20
    table = out[out.index("Confusion matrix"):].splitlines()
    assert table[1].split() == ["0", "1"]
    assert [line.split() for line in table[2:4]] == [
        ["0", *map(str, counts[0])], ["1", *map(str, counts[1])]]
    image = tf.io.decode_png(events(logs / "validation", "confusion_matrix")[15].tolist()[2]).numpy()
    assert image.shape == (64, 64, 3)  # a 32-pixel square per cell
    for true in range(2):
        for guess in range(2):
            fraction = counts[true, guess] / counts[true].sum()
            assert image[32 * true + 16, 32 * guess + 16, 0] == round(255 - fraction * (255 - 8))

    # stopped by SIGTERM in the middle of the second validation interval, then run again
    b = tmp_path / "b" / "c.keras"
    finetune(tiny_encoder, SAMPLE, output=b, callbacks=[Terminate(7)], **options)
    assert "Stopped by SIGTERM at step 7" in capsys.readouterr().out and not b.exists()
    finetune(tiny_encoder, SAMPLE, output=b, **options)
    out = capsys.readouterr().out
    assert f"Resuming from checkpoint at step 7 (epoch 2) in {tmp_path / 'b' / 'c-checkpoints'}." in out
    resumed = keras.saving.load_model(b, compile=False)
    for x, y in zip(classifier.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # the last step's weights and optimizer state too (the classifier keeps the best ones)
    with np.load(tmp_path / "a" / "c-checkpoints" / "ckpt-000000015" / "variables.npz") as x, \
         np.load(tmp_path / "b" / "c-checkpoints" / "ckpt-000000015" / "variables.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            np.testing.assert_allclose(x[name], y[name], rtol=1e-5, atol=1e-6, err_msg=name)
    resumed_losses = scalars(tmp_path / "b" / "c-logs" / "train", "loss")
    assert sorted(resumed_losses) == list(range(1, 16))
    for step in range(1, 16):  # the epoch's running mean continues across the resume
        assert resumed_losses[step] == pytest.approx(losses[step], rel=1e-5)

    # other settings on the same checkpoints stop at once; a finished run says so
    with pytest.raises(ValueError, match="learning_rate: 0.001 -> 0.002"):
        finetune(tiny_encoder, SAMPLE, output=b, **{**options, "learning_rate": 2e-3})
    finetune(tiny_encoder, SAMPLE, output=b, **options)
    assert "holds a finished fine-tuning (step 15)" in capsys.readouterr().out
