"""Checks shared by the layer and model tests, in the spirit of keras-hub's TestCase."""

import json
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository


def tiny_gpt(**overrides):
    """A GPT small enough for seconds; keyword `overrides` change any argument."""
    from tflm.models import GPT

    config = dict(vocab_size=11, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
                  max_sequence_length=8)
    return GPT(**{**config, **overrides})


def tiny_encoder(**overrides):
    """An Encoder small enough for seconds; keyword `overrides` change any argument."""
    from tflm.models import Encoder

    config = dict(vocab_size=23, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                  max_sequence_length=10, dropout=0.0)
    return Encoder(**{**config, **overrides})


def as_json(config):
    """A config as it reads back from a file (tuples become lists)."""
    return json.loads(json.dumps(config))


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_config_round_trip(layer):
    """`from_config(get_config())` rebuilds a layer with the same configuration."""
    config = layer.get_config()
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    return rebuilt


def assert_layer_round_trip(layer, *args, **kwargs):
    """A layer serialized and deserialized, given the same weights, computes the same."""
    expected = layer(*args, **kwargs)
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert rebuilt.get_config() == layer.get_config()
    rebuilt(*args, **kwargs)  # builds it
    rebuilt.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(rebuilt(*args, **kwargs)), to_numpy(expected), atol=1e-6)


def assert_model_round_trip(model, inputs, tmp_path):
    """`.keras` save -> load gives the same outputs and configuration."""
    expected = model(inputs)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert as_json(restored.get_config()) == as_json(model.get_config())
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6),
        restored(inputs),
        expected,
    )
    rebuilt = assert_config_round_trip(model)
    rebuilt(inputs)
    assert rebuilt.count_params() == model.count_params()
    return restored


def assert_overfits(model, x, y, epochs=60, learning_rate=3e-3, factor=0.2):
    """Under `model.fit` the loss on one fixed batch ends far below where it starts."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=epochs, batch_size=len(x), verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < factor * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"
    return losses
