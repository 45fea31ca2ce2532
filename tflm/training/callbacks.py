"""Callbacks for training language models with `model.fit`.

Steps are the optimizer's iterations throughout, so a resumed run continues its
learning-rate schedule, its TensorBoard curves and its samples where they were.
"""

import math
import time

import keras


def optimizer_step(model):
    """The number of training steps `model`'s optimizer has taken (restored on resume)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class TimeBudget(keras.callbacks.Callback):
    """Train for a wall-time budget, with the learning rate fitted to it.

    The rate warms up linearly over `warmup_steps` steps, then follows a cosine from
    `learning_rate` down to `min_learning_rate` over the time that is left, reaching it
    when the budget runs out; training then stops. Use it with an optimizer created with a
    constant learning rate (a float), which this callback sets before every step.

    Args:
        minutes: the budget, counted from `start` (default: when the callback is made).
        clock: a function returning seconds (a stand-in clock for tests).

    `get_state()` / `set_state()` carry the time spent across a resumed run.
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
        self.warmup_end = None  # seconds into the budget when warmup ended

    def elapsed(self):
        return self.clock() - self.start

    def rate(self, step, elapsed):
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.warmup_end is None:
            self.warmup_end = elapsed
        span = max(self.budget - self.warmup_end, 1e-9)
        progress = min(max((elapsed - self.warmup_end) / span, 0.0), 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_learning_rate + (self.learning_rate - self.min_learning_rate) * cosine

    def on_train_batch_begin(self, batch, logs=None):
        rate = self.rate(optimizer_step(self.model), self.elapsed())
        self.model.optimizer.learning_rate.assign(rate)

    def on_train_batch_end(self, batch, logs=None):
        if self.elapsed() >= self.budget:
            self.model.stop_training = True

    def get_state(self):
        return {"elapsed": self.elapsed(), "warmup_end": self.warmup_end}

    def set_state(self, state):
        self.start = self.clock() - state["elapsed"]
        self.warmup_end = state["warmup_end"]


class ProgressLogs(keras.callbacks.Callback):
    """Add `learning_rate` and `tokens_per_second` to each step's logs.

    Callbacks listed after this one (TensorBoard, the progress bar) see them too.
    Tokens per second are those of the epoch's training steps so far, from the start to
    the end of each step: validation, samples and checkpoints do not count, and
    neither does the first step of a `fit` (XLA compiles then). With `tokens_per_batch`
    None (batches of varying length), only the learning rate is added.
    """

    def __init__(self, tokens_per_batch=None):
        super().__init__()
        self.tokens_per_batch = tokens_per_batch
        self._first = True

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self._batches, self._seconds = 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._began = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._began
        if logs is None:
            return
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if self._first or self.tokens_per_batch is None:
            self._first = False
            return
        self._batches += 1
        self._seconds += seconds
        logs["tokens_per_second"] = self._batches * self.tokens_per_batch / self._seconds


class TensorBoard(keras.callbacks.Callback):
    """TensorBoard scalars at the optimizer's step: each training value of the logs
    every `every_n_steps` steps (loss, perplexity, token accuracy, learning rate,
    tokens/s) and the validation values at the end of each epoch.

    Unlike `keras.callbacks.TensorBoard`, whose batch counter starts again at every
    `fit`, the x axis is the optimizer's iterations, so resumed runs extend their curves.
    Runs go in `log_dir/train` and `log_dir/validation`:
    `tensorboard --logdir log_dir`.
    """

    def __init__(self, log_dir, every_n_steps=10):
        super().__init__()
        import tensorflow as tf  # summaries are written by TensorFlow on every backend

        self._summary = tf.summary
        self.log_dir = str(log_dir)
        self.every_n_steps = every_n_steps
        self._writers = {}

    def writer(self, name):
        if name not in self._writers:
            self._writers[name] = self._summary.create_file_writer(f"{self.log_dir}/{name}")
        return self._writers[name]

    def _write(self, run, values, step):
        with self.writer(run).as_default():
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self._summary.scalar(name, value, step=step)
        self.writer(run).flush()  # on disk before a checkpoint of this step can be

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if logs and step % self.every_n_steps == 0:
            self._write("train", logs, step)

    def on_epoch_end(self, epoch, logs=None):
        validation = {k[4:]: v for k, v in (logs or {}).items() if k.startswith("val_")}
        if validation:
            self._write("validation", validation, optimizer_step(self.model))

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class TextSamples(keras.callbacks.Callback):
    """Every `every_n_steps` steps, continue `prompt` with the model and write the text to
    TensorBoard (the Text tab of `log_dir/samples`) and to `print_fn` when given."""

    def __init__(self, prompt, every_n_steps=500, max_new_tokens=200, log_dir=None,
                 sampler="top_k", seed=0, print_fn=None, **sampler_options):
        super().__init__()
        self.prompt = prompt
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.log_dir = None if log_dir is None else str(log_dir)
        self.sampler = sampler
        self.sampler_options = sampler_options or ({"k": 10} if sampler == "top_k" else {})
        self.seed = seed
        self.print_fn = print_fn

    def sample(self):
        return self.prompt + self.model.generate(
            self.prompt, self.max_new_tokens, sampler=self.sampler, seed=self.seed,
            **self.sampler_options,
        )

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if step % self.every_n_steps:
            return
        text = self.sample()
        if self.print_fn is not None:
            self.print_fn(f"\n--- sample at step {step} ---\n{text}\n")
        if self.log_dir is not None:
            import tensorflow as tf

            writer = tf.summary.create_file_writer(f"{self.log_dir}/samples")
            with writer.as_default():
                # two trailing spaces keep the line breaks in TensorBoard's markdown
                tf.summary.text("sample", text.replace("\n", "  \n"), step=step)
            writer.close()
