"""Training speed and loss side by side: tflm against keras-hub's GPT2Backbone (CPU).

1. nanoGPT's CPU configuration of shakespeare_char (4 layers, 4 heads, width 128,
   context 64, batch 12, 2000 iterations, AdamW lr 1e-3 with 100 warmup steps and a
   cosine to 1e-4, beta2 0.99, weight decay 0.1, clipnorm 1, dropout 0), trained once as
   a tflm GPT and once as the same model built from keras-hub's GPT2Backbone, in this
   process, on the same batches: ms/iteration, tokens/s and the final validation loss
   (whole held-out last 10% of tiny Shakespeare). nanoGPT (PyTorch) reaches 1.886 with it.
2. `tflm train` with its default config, as a user runs it: the validation losses it
   logs and when (seconds from the command's start), next to nanoGPT's CPU figures.

    python benchmarks/train_speed.py [--iterations 2000] [--skip-default]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import keras_hub
import numpy as np

import tflm
from tflm.data import corpora, lm_dataset
from tflm.tokenizers import CharTokenizer
from tflm.training import adamw

SHAPE = dict(num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512)
SEQ_LEN, BATCH = 64, 12
NANOGPT_CPU = [(500, 2.4, 2.05), (1000, 4.8, 1.78), (1500, 7.1, 1.67), (2000, 9.5, 1.58),
               (2500, 11.9, 1.54)]  # iteration, minutes of training, validation loss


def tflm_model(vocab_size):
    # nanoGPT's model: learned positions, GELU MLP, LayerNorm without biases, tied head
    model = tflm.GPT(vocab_size, max_sequence_length=SEQ_LEN, position="learned",
                     activation="gelu", norm="layernorm", use_bias=False, **SHAPE)
    model.build((None, SEQ_LEN))
    return model


def keras_hub_model(vocab_size):
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab_size, max_sequence_length=SEQ_LEN, dropout=0.0, **SHAPE)
    token_ids = keras.Input((None,), dtype="int32")
    hidden = backbone({"token_ids": token_ids, "padding_mask": keras.ops.ones_like(token_ids)})
    return keras.Model(token_ids, backbone.token_embedding(hidden, reverse=True))


def train(name, model, train_data, validation_data, iterations):
    optimizer = adamw(model, 1e-3, total_steps=iterations, warmup_steps=100,
                      min_learning_rate=1e-4, beta_2=0.99)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[], jit_compile=True)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.began)

    began = time.perf_counter()
    model.fit(train_data, steps_per_epoch=iterations, epochs=1, verbose=0, callbacks=[Clock()],
              shuffle=False)
    wall = time.perf_counter() - began
    loss = model.evaluate(validation_data, verbose=0)
    step = float(np.median(times[10:]))
    print(f"  {name:<24} {step * 1e3:6.1f} ms/iter  {BATCH * SEQ_LEN / step:8,.0f} tokens/s  "
          f"validation loss {loss:.4f}  ({wall:.0f} s for {iterations} iterations, "
          f"{model.count_params():,} parameters)", flush=True)
    return step, loss


def nanogpt_configuration(iterations):
    text = corpora.tiny_shakespeare().read_text()
    tokenizer = CharTokenizer.train(text)
    train_data, validation_data = lm_dataset(
        corpora.tiny_shakespeare(), tokenizer, SEQ_LEN, BATCH, validation_split=0.1,
        subset="both", repeat=True)
    vocab = tokenizer.vocabulary_size()
    print(f"nanoGPT CPU configuration: 4 x 4 x 128, context {SEQ_LEN}, batch {BATCH}, "
          f"{iterations} iterations (nanoGPT: validation loss 1.886 in about 90 s)")
    keras.utils.set_random_seed(0)
    ours = train("tflm GPT", tflm_model(vocab), train_data, validation_data, iterations)
    keras.utils.set_random_seed(0)
    theirs = train("keras-hub GPT2Backbone", keras_hub_model(vocab), train_data,
                   validation_data, iterations)
    print(f"  tflm / keras-hub tokens/s: {theirs[0] / ours[0]:.2f}x")


def default_config():
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as output:
        print("\n`tflm train` (default config), time from the command's start:", flush=True)
        began = time.time()
        subprocess.run([sys.executable, "-m", "tflm", "train", "--set", f"output.dir={output}",
                        "--set", "train.verbose=0"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        total = time.time() - began
        points = []
        for path in sorted((Path(output) / "logs" / "validation").glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    if value.tag == "loss":
                        points.append((event.step, event.wall_time - began,
                                       float(tf.make_ndarray(value.tensor))))
    print("  step  seconds  validation loss")
    for step, seconds, loss in sorted(points):
        print(f"  {step:5d}  {seconds:7.0f}  {loss:.4f}")
    at_five = [p for p in points if p[1] <= 300]
    if at_five:
        print(f"  after 5 minutes (last validation before 300 s, mid-schedule): "
              f"{at_five[-1][2]:.4f}")
    print(f"  after 10 minutes: {points[-1][2]:.4f} (the command ended at {total:.0f} s)")
    print("  nanoGPT, CPU, 4 x 6 x 192, context 128, batch 24: " + ", ".join(
        f"{loss} after {minutes} min" for _, minutes, loss in NANOGPT_CPU))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--skip-default", action="store_true", help="skip the 10-minute run")
    args = parser.parse_args()
    nanogpt_configuration(args.iterations)
    if not args.skip_default:
        default_config()


if __name__ == "__main__":
    main()
