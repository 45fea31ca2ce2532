"""compile() with no arguments: the fine-tuning defaults of Classifier and MaskedLM, checked
against hand-computed learning rates and numpy cross-entropies. Token inputs only: these
tests also run on the JAX backend (text in and out: tests/test_classifier_text.py)."""

import keras
import numpy as np
import pytest

from tests.helpers import cross_entropy, tiny_encoder, to_numpy
from tflm.models import Classifier, MaskedLM


def separable(n=16, length=8, seed=0):
    """Token inputs whose class (0 or 1) is their first token (2 or 1)."""
    ids = np.random.default_rng(seed).integers(3, 23, size=(n, length)).astype("int32")
    labels = np.arange(n) % 2
    ids[:, 0] = np.where(labels == 1, 1, 2)
    return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}, labels


@pytest.mark.backend_independent
def test_compile_defaults_warm_up_to_a_fine_tuning_rate():
    model = Classifier(tiny_encoder(), 2)  # not built: compile builds it
    model.compile()
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    rates = [float(to_numpy(optimizer._learning_rate(step))) for step in (0, 25, 50, 10_000)]
    np.testing.assert_allclose(rates, [0.0, 2.5e-5, 5e-5, 5e-5], rtol=1e-6)
    assert optimizer.weight_decay == 0.01 and optimizer.global_clipnorm == 1.0
    # norm scales and biases are not decayed; kernels and embeddings are
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed == {v.path for v in model.trainable_variables if len(v.shape) >= 2}


def test_compile_defaults_train_a_classifier(seeded):
    x, y = separable()
    model = Classifier(tiny_encoder(), 2, pooling="mean", dropout=0.0)
    model.compile()
    logits = to_numpy(model(x))
    before = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(before["loss"], cross_entropy(logits, y).mean(), rtol=1e-5)
    assert before["accuracy"] == np.mean(logits.argmax(-1) == y)
    losses = model.fit(x, y, batch_size=16, epochs=40, verbose=0).history["loss"]
    # a fine-tuning rate moves a random tiny encoder slowly, but steadily
    assert losses[-1] < losses[0] - 0.002 and losses[-1] < losses[20], losses


@pytest.mark.backend_independent
def test_masked_lm_compile_defaults_count_only_weighted_predictions(seeded):
    x, _ = separable(n=4)
    x["mask_positions"] = np.array([[1, 2, 3]] * 4, "int32")
    labels = np.take_along_axis(x["token_ids"], x["mask_positions"], axis=1)
    weights = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], "float32")
    model = MaskedLM(tiny_encoder())
    model.compile()
    logits = to_numpy(model(x))
    kept = weights > 0
    result = model.evaluate(x, labels, sample_weight=weights, batch_size=4, verbose=0,
                            return_dict=True)
    # the mean over the 7 real predictions, not over all 12 slots
    np.testing.assert_allclose(result["loss"], cross_entropy(logits, labels)[kept].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(result["accuracy"],
                               np.mean(logits.argmax(-1)[kept] == labels[kept]), rtol=1e-6)
    losses = model.fit(x, labels, sample_weight=weights, batch_size=4, epochs=30,
                       verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses


@pytest.mark.backend_independent
def test_explicit_compile_arguments_are_used_as_given():
    model = Classifier(tiny_encoder(), 2)
    optimizer = keras.optimizers.SGD(0.1)
    model.compile(optimizer=optimizer, metrics=[])
    assert model.optimizer is optimizer


def test_building_a_built_task_keeps_its_weights():
    x, _ = separable(n=2)
    model = Classifier(tiny_encoder(), 2)
    logits = to_numpy(model(x))
    model.build({"token_ids": (None, 16), "padding_mask": (None, 16)})  # as callers do
    np.testing.assert_array_equal(to_numpy(model(x)), logits)
