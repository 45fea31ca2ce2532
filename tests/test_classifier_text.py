"""A Classifier takes text in Python: predict gives probabilities, classify label names, and
fit and evaluate take texts with labels or a dataset of (text, label). Outside tests/models,
which also run on JAX without TensorFlow: tokenizers run on TensorFlow."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import to_numpy
from tflm.data.classification import encode_texts
from tflm.models import Classifier, Encoder
from tflm.tokenizers import WordPieceTokenizer

TEXTS = ["a good movie", "good acting and a good plot", "a fine film", "bad and dull",
         "a bad movie", "dull plot"]
LABELS = ["positive", "positive", "positive", "negative", "negative", "negative"]
NAMES = ["negative", "positive"]


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.train(TEXTS * 5, 60)


def classifier(tokenizer, **options):
    keras.utils.set_random_seed(0)
    encoder = Encoder(vocab_size=tokenizer.vocabulary_size(), num_layers=1, num_heads=2,
                      hidden_dim=16, intermediate_dim=32, max_sequence_length=16, dropout=0.0)
    model = Classifier(encoder, 2, dropout=0.0, label_names=NAMES, tokenizer=tokenizer, **options)
    model.build({"token_ids": (None, None), "padding_mask": (None, None)})
    # a larger head than initialized: logits far apart, texts of both classes
    model.head.kernel.assign(np.random.default_rng(1).normal(0, 2, model.head.kernel.shape))
    return model


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_predict_on_texts_is_the_softmax_of_the_logits(tokenizer, pooling):
    model = classifier(tokenizer, pooling=pooling)
    inputs = encode_texts(tf.constant(TEXTS), tokenizer, 16)
    logits = to_numpy(model(inputs))
    expected = softmax(logits)
    # batches of 4 are padded apart (and to a multiple of 16): padding changes nothing
    for texts in (TEXTS, np.array(TEXTS), tf.constant(TEXTS), tf.data.Dataset.from_tensor_slices(TEXTS)):
        np.testing.assert_allclose(model.predict(texts, batch_size=4, verbose=0), expected,
                                   atol=1e-5)  # compiled, and padded apart: float noise
    # token inputs still give logits, as a call does
    np.testing.assert_allclose(model.predict(inputs, verbose=0), logits, atol=1e-5)


def test_classify_returns_label_names(tokenizer):
    model = classifier(tokenizer)
    # a bias that puts the median text on the boundary: texts of both classes
    before = model.predict(TEXTS, verbose=0)  # their log is the logits plus a constant
    margins = np.log(before[:, 1]) - np.log(before[:, 0])
    model.head.bias.assign([0.0, -np.median(margins)])
    probabilities = model.predict(TEXTS, verbose=0)
    labels = model.classify(TEXTS)
    assert labels == [NAMES[i] for i in probabilities.argmax(-1)]
    assert set(labels) == set(NAMES)  # both classes occur: argmax is not constant
    labels, returned = model.classify(TEXTS, return_probabilities=True)
    np.testing.assert_allclose(returned, probabilities, atol=1e-5)
    label, one = model.classify(TEXTS[3], return_probabilities=True)
    assert label == labels[3] and one.shape == (2,)
    unnamed = Classifier(model.encoder, 2, tokenizer=tokenizer)
    assert unnamed.classify(TEXTS[:2]) == [str(i) for i in unnamed.predict(TEXTS[:2], verbose=0)
                                           .argmax(-1)]


def test_fit_on_texts_and_label_names_trains(tokenizer):
    model = classifier(tokenizer)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))  # the default loss and accuracy
    history = model.fit(TEXTS, LABELS, batch_size=3, epochs=15, verbose=0,
                        validation_data=(TEXTS, LABELS)).history
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert history["val_accuracy"][-1] == 1.0
    assert model.classify(TEXTS) == LABELS
    result = model.evaluate(np.array(TEXTS), [NAMES.index(label) for label in LABELS],
                            verbose=0, return_dict=True)
    assert result["accuracy"] == 1.0


@pytest.mark.parametrize("batched", [False, True])
def test_fit_on_a_dataset_of_text_and_label_trains(tokenizer, batched):
    ids = [NAMES.index(label) for label in LABELS]
    dataset = tf.data.Dataset.from_tensor_slices((TEXTS, ids))
    dataset = dataset.batch(3) if batched else dataset
    model = classifier(tokenizer)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    losses = model.fit(dataset, epochs=15, verbose=0, validation_data=dataset).history["loss"]
    assert losses[-1] < 0.2 * losses[0]
    assert model.classify(TEXTS) == LABELS


def test_text_without_a_tokenizer_is_an_error_that_says_so(tokenizer):
    model = Classifier(classifier(tokenizer).encoder, 2)  # neither it nor its encoder has one
    for call in (lambda: model.predict(["a film"]), lambda: model.classify("a film"),
                 lambda: model.fit(["a film"], [0])):
        with pytest.raises(ValueError, match="has no tokenizer, so it cannot read text"):
            call()
    named = classifier(tokenizer)
    with pytest.raises(ValueError, match="unknown label 'great'"):
        named.fit(["a film"], ["great"])
    with pytest.raises(ValueError, match="need the classifier's label_names"):
        Classifier(named.encoder, 2, tokenizer=tokenizer).fit(["a film"], ["positive"])
    with pytest.raises(TypeError, match="classify takes a string or a list of strings"):
        named.classify({"token_ids": np.ones((1, 3), "int32")})
