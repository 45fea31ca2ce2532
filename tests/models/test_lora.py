import keras
import numpy as np
import pytest

from tflm.models import GPT, Classifier, Encoder, enable_lora, merge_lora
from tests.helpers import random_ids, tiny_gpt, to_numpy


def values(model):
    return {v.path: to_numpy(v) for v in model.weights}


def fit(model, x, y, steps=5):
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=steps, verbose=0)


def test_gpt_lora_trains_only_the_adapters_and_merges_to_the_same_outputs(seeded):
    model = tiny_gpt(num_layers=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
    ids = random_ids((8, 9), 11)
    model(ids[:, :-1])
    before = values(model)
    enable_lora(model, rank=2)
    trainable = {v.path for v in model.trainable_variables}
    assert trainable and all("lora_kernel" in path for path in trainable)
    assert len(trainable) == 2 * 2 * 2  # a and b, on qkv and output, in 2 blocks
    fit(model, ids[:, :-1], ids[:, 1:])
    after = values(model)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)  # the base is frozen
    assert any(np.abs(after[p]).max() > 0 for p in after if p.endswith("lora_kernel_b"))

    merged = merge_lora(model)
    assert not any("lora" in v.path for v in merged.weights)
    np.testing.assert_allclose(to_numpy(merged(ids[:, :-1])), to_numpy(model(ids[:, :-1])),
                               atol=1e-5)
    assert not np.allclose(to_numpy(merged(ids[:, :-1])),
                           to_numpy(GPT.from_config(model.get_config())(ids[:, :-1])))


def test_classifier_lora_keeps_the_head_trainable(seeded):
    encoder = Encoder.from_preset("bert-tiny", vocab_size=30, max_sequence_length=16)
    classifier = Classifier(encoder, num_classes=2)
    ids = np.random.default_rng(0).integers(1, 30, (8, 6)).astype("int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    classifier(inputs)
    enable_lora(classifier, rank=4)
    trainable = {v.path for v in classifier.trainable_variables}
    assert {p for p in trainable if "lora" not in p} == {v.path for v in classifier.head.weights}
    with pytest.raises(TypeError, match="LoRA applies to a GPT"):
        enable_lora(keras.layers.Dense(3), rank=2)
    lstm = tiny_gpt(block="lstm", hidden_dim=16, max_sequence_length=16)
    lstm(ids % 11)
    with pytest.raises(ValueError, match="LSTM GPT has none"):
        enable_lora(lstm, rank=2)
