import math

import keras
import numpy as np
import pytest

from tflm.models import GPT
from tflm.training import TimeBudget


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_budget_warms_up_decays_with_the_clock_and_stops():
    clock = FakeClock()
    budget = TimeBudget(minutes=1, learning_rate=1e-2, min_learning_rate=1e-3, warmup_steps=4,
                        clock=clock)
    rates = []

    class Tick(keras.callbacks.Callback):  # each step takes 5 s of the fake clock
        def on_train_batch_end(self, batch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate.numpy()))
            clock.now += 5.0

    keras.utils.set_random_seed(0)
    model = GPT(11, 1, 2, 8, 16, 8)
    model.compile(optimizer=keras.optimizers.AdamW(1.0))
    ids = np.random.default_rng(0).integers(0, 11, (100, 9)).astype("int32")
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=1, epochs=1, verbose=0,
              callbacks=[Tick(), budget])
    assert len(rates) == 12  # 60 s at 5 s a step
    np.testing.assert_allclose(rates[:4], [2.5e-3, 5e-3, 7.5e-3, 1e-2], rtol=1e-6)
    # warmup ended at 20 s; the cosine spans the 40 s left
    for step in range(4, 12):
        progress = (5.0 * step - 20.0) / 40.0
        expected = 1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * progress))
        assert rates[step] == pytest.approx(expected, rel=1e-5)


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        TimeBudget(0, 1e-3)
