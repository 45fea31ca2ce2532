import keras
import numpy as np
import pytest

from tflm.models import GPT
from tests.helpers import assert_model_round_trip, assert_overfits, to_numpy

# Tiny configurations covering each block kind, position kind, norm, activation and GQA.
CONFIGS = {
    "gpt2": dict(position="learned", activation="gelu_tanh", norm="layernorm"),
    "llama": dict(
        position="rotary", activation="swiglu", norm="rmsnorm", num_kv_heads=1, use_bias=False
    ),
    "sinusoidal": dict(position="sinusoidal", tie_embeddings=False),
    "lstm": dict(block="lstm", position="sinusoidal", tie_embeddings=False),
}


def tiny_gpt(name, **overrides):
    config = dict(vocab_size=17, num_layers=2, hidden_dim=16, max_sequence_length=12)
    if CONFIGS[name].get("block") != "lstm":
        config.update(num_heads=2, intermediate_dim=32)
    return GPT(**{**config, **CONFIGS[name], **overrides})


def random_ids(shape, seed=0, vocab=17):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype("int32")


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_shape_and_dtype(name):
    logits = tiny_gpt(name)(random_ids((3, 10)))
    assert logits.shape == (3, 10, 17)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


@pytest.mark.parametrize("name", CONFIGS)
def test_changing_a_future_token_never_changes_earlier_logits(name):
    model = tiny_gpt(name)
    ids = random_ids((2, 10))
    changed = ids.copy()
    changed[:, 6] = (changed[:, 6] + 1) % 17
    before, after = to_numpy(model(ids)), to_numpy(model(changed))
    np.testing.assert_allclose(before[:, :6], after[:, :6], atol=1e-5)
    assert not np.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_matches_full_forward(name):
    model = tiny_gpt(name)
    ids = random_ids((2, 12), seed=1)
    full = to_numpy(model(ids))
    cache = model.init_cache(batch_size=2, max_length=12)
    logits, cache = model(ids[:, :5], cache=cache, cache_index=0)
    steps = [to_numpy(logits)]
    for i in range(5, 12):
        logits, cache = model(ids[:, i : i + 1], cache=cache, cache_index=i)
        steps.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_save_and_load_round_trip(name, tmp_path):
    assert_model_round_trip(tiny_gpt(name, dropout=0.1), random_ids((2, 8)), tmp_path)


@pytest.mark.parametrize("name", ["gpt2", "lstm"])
def test_overfits_a_fixed_batch(name):
    ids = random_ids((4, 11), seed=2)
    model = tiny_gpt(name, hidden_dim=32)
    losses = assert_overfits(model, ids[:, :-1], ids[:, 1:], epochs=80, learning_rate=1e-2)
    assert losses[0] > 2.5  # about ln(17) = 2.83 at the start


def test_gpt2_124m_preset_has_gpt2_parameter_count():
    model = GPT.from_preset("gpt2-124m")
    model.build((1, 8))
    assert model.count_params() == 124_439_808  # OpenAI GPT-2 small, tied embeddings


def test_preset_overrides_and_summary(capsys):
    model = GPT.from_preset(
        "shakespeare-char", num_layers=1, hidden_dim=32, intermediate_dim=64, tokenizer=None
    )
    assert model.num_layers == 1 and model.vocab_size == 65
    model.build((None, 16))
    model.summary()
    assert "block_0" in capsys.readouterr().out


def test_lstm_preset_is_embedding_positions_lstm_and_dense_head():
    model = GPT.from_preset("shakespeare-char-lstm", tokenizer=None)
    assert model.block == "lstm" and model.position == "sinusoidal"
    assert not model.tie_embeddings


def test_bad_configurations_are_errors():
    with pytest.raises(ValueError, match="Unknown preset 'gpt5'.*available presets"):
        GPT.from_preset("gpt5")
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['widht'\]"):
        GPT.from_preset("shakespeare-char", widht=3)
    with pytest.raises(ValueError, match="Unknown block 'mamba'"):
        tiny_gpt("gpt2", block="mamba")
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_dim=16"):
        tiny_gpt("gpt2", num_heads=3)
    with pytest.raises(ValueError, match="Rotary positions"):
        tiny_gpt("lstm", position="rotary")


def test_sequence_longer_than_context_is_an_error():
    model = tiny_gpt("gpt2")
    with pytest.raises(ValueError, match="13 tokens but the model's context is 12"):
        model(random_ids((1, 13)))
    with pytest.raises(ValueError, match="exceeds the model's context of 12"):
        model.init_cache(batch_size=1, max_length=20)


@pytest.mark.parametrize("name", ["gpt2", "lstm"])
def test_remat_trains_exactly_like_no_remat(name):
    # Recomputing activations in the backward pass must give the same gradients.
    ids = random_ids((4, 9), seed=3)
    models = [tiny_gpt(name, remat=remat) for remat in (False, True)]
    for model in models:
        model.build((None, 8))
    models[1].set_weights(models[0].get_weights())
    initial = models[0].get_weights()
    for model in models:
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(ids[:, :-1], ids[:, 1:], epochs=3, verbose=0)
    trained, rematerialized = models[0].get_weights(), models[1].get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(initial, trained)) > 1e-2
    for a, b in zip(trained, rematerialized):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert GPT.from_config(models[1].get_config()).remat
