"""Fixtures shared by the generation tests (backend-neutral: they also run under JAX)."""

import keras
import pytest

from tflm.models import GPT


@pytest.fixture(scope="session")
def make_gpt():
    """Small GPTs whose samplers make real choices: `make_gpt("lstm", vocab_size=5)`."""

    def make(block="transformer", **overrides):
        keras.utils.set_random_seed(2)  # a draw whose greedy continuations are not one token
        config = dict(vocab_size=11, num_layers=2, hidden_dim=16, max_sequence_length=48,
                      block=block, tie_embeddings=False)
        if block == "transformer":
            config.update(num_heads=2, num_kv_heads=1, intermediate_dim=32, position="rotary")
        else:  # an LSTM GPT takes no attention or feed-forward arguments
            config.update(position="sinusoidal")
        model = GPT(**{**config, **overrides})
        model.build((1, 8))
        # Sharper logits than a fresh initialization gives, so that samplers make real choices.
        model.set_weights([w * 2 for w in model.get_weights()])
        return model

    return make
