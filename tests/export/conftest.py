"""Models the export and serving tests share (each test module builds its own)."""

import keras
import pytest
import tensorflow as tf

import tflm
from tflm.models import Classifier, Encoder
from tflm.tokenizers import WordPieceTokenizer


@pytest.fixture(scope="module")
def gpt():
    keras.utils.set_random_seed(0)
    model = tflm.GPT.from_preset("shakespeare-char", num_layers=1, hidden_dim=32,
                                 intermediate_dim=64, max_sequence_length=48)
    model.build((None, 16))
    return model


@pytest.fixture(scope="module")
def classifier():
    lines = ["a good movie", "a bad movie", "good acting and a good plot", "bad and dull"] * 10
    tokenizer = WordPieceTokenizer.train(lines, 60)
    keras.utils.set_random_seed(0)
    encoder = Encoder.from_preset("bert-tiny", vocab_size=tokenizer.vocabulary_size(),
                                  max_sequence_length=32)
    model = Classifier(encoder, 2, label_names=["negative", "positive"], tokenizer=tokenizer)
    model.build({"token_ids": (None, 8), "padding_mask": (None, 8)})
    return model


@pytest.fixture(scope="module")
def models(gpt, classifier, tmp_path_factory):
    """The two models exported and loaded back: {"gpt": ..., "classifier": ...}."""
    from tflm.export import saved_model

    base = tmp_path_factory.mktemp("saved_models")
    return {
        "gpt": tf.saved_model.load(str(saved_model(gpt, base / "gpt", max_new_tokens=6,
                                                   warmup_batch_size=1))),
        "classifier": tf.saved_model.load(str(saved_model(classifier, base / "classifier",
                                                          warmup_batch_size=1))),
    }
