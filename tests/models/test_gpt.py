import keras
import numpy as np
import pytest

from tflm.models import GPT
from tests.helpers import (
    assert_cached_decoding_matches,
    assert_overfits,
    random_ids,
    run_model_test,
    to_numpy,
)

SIZES = dict(vocab_size=17, num_layers=2, hidden_dim=16, max_sequence_length=12)
TRANSFORMER = dict(num_heads=2, intermediate_dim=32)
# Tiny configurations covering each block kind, position kind, norm, activation and GQA.
CONFIGS = {
    "gpt2": dict(TRANSFORMER, position="learned", activation="gelu_tanh", norm="layernorm"),
    "llama": dict(
        TRANSFORMER, position="rotary", activation="swiglu", norm="rmsnorm", num_kv_heads=1,
        use_bias=False,
    ),
    # heads wider than 16 / 2, biases on q/k/v only (Qwen2), Llama 3's RoPE scaling and a
    # sliding window (Mistral)
    "llama3": dict(
        TRANSFORMER, position="rotary", activation="swiglu", norm="rmsnorm", num_kv_heads=1,
        head_dim=12, use_bias=False, qkv_bias=True, sliding_window=5, tie_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                          high_freq_factor=2.0, original_max_position_embeddings=6),
    ),
    "sinusoidal": dict(TRANSFORMER, position="sinusoidal", tie_embeddings=False),
    "lstm": dict(block="lstm", position="sinusoidal", tie_embeddings=False),
}


def gpt(name, **overrides):
    return GPT(**{**SIZES, **CONFIGS[name], **overrides})


@pytest.mark.parametrize("name", CONFIGS)
def test_model_checks(name, tmp_path):
    # Shapes, float32 logits (also under mixed precision), serialization, `.keras`
    # round trip with dropout in the config, one training step.
    run_model_test(GPT, {**SIZES, **CONFIGS[name], "dropout": 0.1}, random_ids((3, 10), 17),
                   expected_output_shape=(3, 10, 17), tmp_path=tmp_path,
                   expected_output_dtype="float32")


@pytest.mark.parametrize("name", CONFIGS)
def test_changing_a_future_token_never_changes_earlier_logits(name):
    model = gpt(name)
    ids = random_ids((2, 10), 17)
    changed = ids.copy()
    changed[:, 6] = (changed[:, 6] + 1) % 17
    before, after = to_numpy(model(ids)), to_numpy(model(changed))
    np.testing.assert_allclose(before[:, :6], after[:, :6], atol=1e-5)
    assert not np.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_matches_full_forward(name):
    assert_cached_decoding_matches(gpt(name), random_ids((2, 12), 17, seed=1), prefill=5, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "lstm"])
def test_overfits_a_fixed_batch(name):
    ids = random_ids((4, 11), 17, seed=2)
    model = gpt(name, hidden_dim=32)
    losses = assert_overfits(model, ids[:, :-1], ids[:, 1:], epochs=80, learning_rate=1e-2)
    assert losses[0] > 2.5  # about ln(17) = 2.83 at the start


@pytest.mark.backend_independent
def test_gpt2_124m_preset_has_gpt2_parameter_count():
    model = GPT.from_preset("gpt2-124m")
    model.build((1, 8))
    assert model.count_params() == 124_439_808  # OpenAI GPT-2 small, tied embeddings


@pytest.mark.backend_independent
def test_preset_overrides_and_summary(capsys):
    model = GPT.from_preset(
        "shakespeare-char", num_layers=1, hidden_dim=32, intermediate_dim=64, tokenizer=None
    )
    assert model.num_layers == 1 and model.vocab_size == 65
    model.build((None, 16))
    model.summary()
    assert "block_0" in capsys.readouterr().out


@pytest.mark.backend_independent
def test_lstm_preset_is_embedding_positions_lstm_and_dense_head():
    model = GPT.from_preset("shakespeare-char-lstm", tokenizer=None)
    assert model.block == "lstm" and model.position == "sinusoidal"
    assert not model.tie_embeddings


@pytest.mark.backend_independent
def test_bad_configurations_are_errors():
    with pytest.raises(ValueError, match="Unknown preset 'gpt5'.*available presets"):
        GPT.from_preset("gpt5")
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['widht'\]"):
        GPT.from_preset("shakespeare-char", widht=3)
    with pytest.raises(ValueError, match="Unknown block 'mamba'"):
        gpt("gpt2", block="mamba")
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_dim=16"):
        gpt("gpt2", num_heads=3)
    with pytest.raises(ValueError, match="Rotary positions"):
        gpt("lstm", position="rotary")
    with pytest.raises(ValueError, match="head_dim, sliding_window configure transformer blocks"):
        gpt("lstm", head_dim=4, sliding_window=3)
    with pytest.raises(ValueError, match="rope_scaling scales rotary positions; position is 'learned'"):
        gpt("gpt2", rope_scaling=CONFIGS["llama3"]["rope_scaling"])
    with pytest.raises(ValueError, match="Unsupported RoPE scaling 'linear'"):
        gpt("llama", rope_scaling={"type": "linear", "factor": 2.0})


def test_llama_options_default_to_what_they_replace():
    """head_dim, qkv_bias, rope_scaling and sliding_window left out build the model they
    describe when spelled out: hidden_dim / num_heads, use_bias, none, none."""
    plain = gpt("llama", tie_embeddings=False)
    plain.build((None, 10))
    spelled = gpt("llama", tie_embeddings=False, head_dim=8, qkv_bias=False,
                  rope_scaling={"rope_type": "default"}, sliding_window=12)
    spelled.build((None, 10))
    spelled.set_weights(plain.get_weights())  # the same shapes
    ids = random_ids((2, 10), 17)
    np.testing.assert_allclose(to_numpy(spelled(ids)), to_numpy(plain(ids)), atol=1e-5)


def test_sequence_longer_than_context_is_an_error():
    model = gpt("gpt2")
    with pytest.raises(ValueError, match="13 tokens but the model's context is 12"):
        model(random_ids((1, 13), 17))
    with pytest.raises(ValueError, match="exceeds the model's context of 12"):
        model.init_cache(batch_size=1, max_length=20)


@pytest.mark.parametrize("name", ["gpt2", "lstm"])
def test_remat_trains_exactly_like_no_remat(name):
    # Recomputing activations in the backward pass must give the same gradients.
    ids = random_ids((4, 9), 17, seed=3)
    models = [gpt(name, remat=remat) for remat in (False, True)]
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
