import math

import keras
import numpy as np
import pytest

from tests.helpers import tiny_gpt, to_numpy
from tflm.training import adamw, warmup_cosine


def built_gpt():
    keras.utils.set_random_seed(0)
    model = tiny_gpt(vocab_size=13, norm="rmsnorm")
    model.build((None, 8))
    return model


def test_schedule_is_linear_warmup_then_cosine():
    schedule = warmup_cosine(1e-3, total_steps=110, warmup_steps=10, min_learning_rate=1e-4)

    def expected(step):
        if step < 10:
            return 1e-3 * step / 10
        progress = min(step - 10, 100) / 100
        return 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))

    for step in [0, 5, 10, 35, 60, 109, 110, 200]:
        assert float(to_numpy(schedule(step))) == pytest.approx(expected(step), rel=1e-5, abs=1e-9)


def test_weight_decay_skips_norms_and_biases():
    model = built_gpt()
    optimizer = adamw(model, learning_rate=0.0, weight_decay=0.5)
    optimizer.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed == {v.path for v in model.trainable_variables if len(v.shape) >= 2}
    assert any("bias" in v.path for v in model.trainable_variables if v.path not in decayed)
    everything = adamw(model, decay_norms_and_biases=True)
    everything.build(model.trainable_variables)
    assert all(everything._use_weight_decay(v) for v in model.trainable_variables)


def test_gradient_accumulation_equals_one_bigger_batch():
    ids = np.random.default_rng(0).integers(0, 13, (8, 9)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    results = []
    for accumulation, batch in [(None, 8), (2, 4)]:
        model = built_gpt()
        model.compile(
            optimizer=adamw(model, learning_rate=1e-2, gradient_accumulation_steps=accumulation),
            metrics=[],
        )
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_unbuilt_model_and_bad_schedule_are_errors():
    with pytest.raises(ValueError, match="Build the model"):
        adamw(tiny_gpt(vocab_size=13))
    with pytest.raises(ValueError, match="warmup_steps=20 must be"):
        warmup_cosine(1e-3, total_steps=10, warmup_steps=20)
