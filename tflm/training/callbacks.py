"""Callbacks for training language models with `model.fit`."""

import math
import time

import keras


class TimeBudget(keras.callbacks.Callback):
    """Train for a wall-time budget, with the learning rate fitted to it.

    The rate warms up linearly over `warmup_steps` steps, then follows a cosine from
    `learning_rate` down to `min_learning_rate` over the time that is left, reaching it
    when the budget runs out; training then stops. Use it with an optimizer created with a
    constant learning rate (a float), which this callback sets before every step.

    Args:
        minutes: the budget, counted from `start` (default: when the callback is made).
        clock: a function returning seconds (a stand-in clock for tests).
    """

    def __init__(self, minutes, learning_rate, min_learning_rate=0.0, warmup_steps=0,
                 start=None, clock=time.monotonic):
        super().__init__()
        if minutes <= 0:
            raise ValueError(f"The time budget must be positive; got {minutes} minutes.")
        self.budget = minutes * 60.0
        self.learning_rate = learning_rate
        self.min_learning_rate = min_learning_rate
        self.warmup_steps = warmup_steps
        self.clock = clock
        self.start = clock() if start is None else start
        self.step = 0
        self.decay_start = None  # when warmup ended

    def rate(self, now):
        if self.step < self.warmup_steps:
            return self.learning_rate * (self.step + 1) / self.warmup_steps
        if self.decay_start is None:
            self.decay_start = now
        span = max(self.start + self.budget - self.decay_start, 1e-9)
        progress = min(max((now - self.decay_start) / span, 0.0), 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_learning_rate + (self.learning_rate - self.min_learning_rate) * cosine

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.rate(self.clock()))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.clock() - self.start >= self.budget:
            self.model.stop_training = True
