import math

import keras
import numpy as np
import pytest

from tests.helpers import tiny_gpt
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
    model = tiny_gpt()
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


def test_text_samples_are_printed_and_not_kept():
    from tflm.tokenizers import CharTokenizer
    from tflm.training import TextSamples

    tokenizer = CharTokenizer.train("abcdefghij")
    keras.utils.set_random_seed(0)
    model = tiny_gpt(vocab_size=tokenizer.vocabulary_size(), tokenizer=tokenizer)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    printed = []
    samples = TextSamples("abc", every_n_steps=2, max_new_tokens=3, print_fn=printed.append)
    ids = np.random.default_rng(0).integers(0, 10, (8, 9)).astype("int32")

    def state_sizes():  # the size of every container the callback holds
        return {k: len(v) for k, v in vars(samples).items() if isinstance(v, (list, dict, set))}

    model.fit(ids[:, :-1], ids[:, 1:], batch_size=2, epochs=1, verbose=0, callbacks=[samples])
    after_two = state_sizes()
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=2, epochs=1, verbose=0, callbacks=[samples])
    assert [p.split("---")[1].strip() for p in printed] == [
        f"sample at step {s}" for s in (2, 4, 6, 8)]
    assert all(p.split("---\n")[1].startswith("abc") for p in printed)
    assert state_sizes() == after_two  # nothing grows with the number of samples
