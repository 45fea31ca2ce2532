import subprocess
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
         "--layer-decay", "0.9", "--patience", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
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
