"""Validation loss of a char-level GPT on tiny Shakespeare within a wall-time budget (CPU).

Trains the shakespeare-char preset (or the shape given) with model.fit on lm_dataset and
prints the validation loss (nats per character, on the whole held-out last 10%) every
250 steps and when the budget, counted from the script's start, runs out.

    python benchmarks/shakespeare_budget.py [--minutes 10] [--schedule-steps 3000 | --fit-schedule]

--fit-schedule fits the learning rate to the time budget (tflm.training.TimeBudget: warmup,
then a cosine over the time left) instead of a cosine over a fixed number of steps.
"""

import argparse
import time

START = time.time()

import keras  # noqa: E402

import tflm  # noqa: E402
import tflm.data  # noqa: E402
from tflm.training import TimeBudget, adamw  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--schedule-steps", type=int, default=3000, help="cosine decay length")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--fit-schedule", action="store_true", help="decay over the time budget")
    args = parser.parse_args()
    budget = args.minutes * 60

    model = tflm.GPT.from_preset("shakespeare-char")
    train, validation = tflm.data.lm_dataset(
        tflm.data.corpora.tiny_shakespeare(), model.tokenizer, args.seq_len, args.batch_size,
        validation_split=0.1, subset="both", model=model,
    )
    model.build((None, args.seq_len))
    callbacks = []
    if args.fit_schedule:
        optimizer = adamw(model, args.learning_rate)  # TimeBudget sets the rate every step
        callbacks.append(TimeBudget(args.minutes, args.learning_rate, args.learning_rate / 10,
                                    args.warmup_steps, start=START, clock=time.time))
    else:
        optimizer = adamw(model, args.learning_rate, total_steps=args.schedule_steps,
                          warmup_steps=args.warmup_steps, min_learning_rate=args.learning_rate / 10)
    model.compile(optimizer=optimizer, metrics=[])

    class Report(keras.callbacks.Callback):
        step = 0

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            elapsed = time.time() - START
            if self.step % 250 == 0 or elapsed > budget:
                loss = self.model.evaluate(validation, verbose=0)
                print(f"step {self.step:5d}  {elapsed:5.0f} s  train loss {logs['loss']:.3f}  "
                      f"validation loss {loss:.4f}", flush=True)
            if elapsed > budget:
                self.model.stop_training = True

    print(f"shakespeare-char preset, {model.count_params():,} parameters; seq_len {args.seq_len}, "
          f"batch {args.batch_size}, budget {args.minutes:g} min from the script's start")
    callbacks.append(Report())
    model.fit(train.repeat(), steps_per_epoch=10**9, epochs=1, callbacks=callbacks, verbose=0)


if __name__ == "__main__":
    main()
