"""Fixtures shared by the generation tests (backend-neutral: they also run under JAX)."""

import keras
import pytest

from tests.helpers import tiny_gpt


@pytest.fixture(scope="session")
def make_gpt():
    """Small GPTs whose samplers make real choices: `make_gpt("lstm", vocab_size=5)`."""

    def make(block="transformer", **overrides):
        keras.utils.set_random_seed(0)
        config = dict(
            num_layers=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=48, block=block,
            position="rotary" if block == "transformer" else "sinusoidal",
            num_kv_heads=1 if block == "transformer" else None, tie_embeddings=False,
        )
        model = tiny_gpt(**{**config, **overrides})
        model.build((1, 8))
        # Sharper logits than a fresh initialization gives, so that samplers make real choices.
        model.set_weights([w * 2 for w in model.get_weights()])
        return model

    return make
