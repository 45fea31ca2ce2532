"""Input pipeline speed against training speed, on tiny Shakespeare (CPU, TensorFlow backend).

Prints the tokens/s that `tflm.data.lm_dataset` delivers with the byte and BPE tokenizers
(one full epoch, after the pipeline is built), next to the tokens/s that `model.fit` trains
the shakespeare-char preset at. The pipeline must be the faster of the two by a wide margin.

    python benchmarks/input_pipeline.py [--seq-len 256] [--batch-size 32] [--train-steps 20]
"""

import argparse
import os
import platform
import time

import keras
import numpy as np

import tflm
import tflm.data
from tflm.tokenizers import BPETokenizer, ByteTokenizer


def pipeline_tokens_per_second(tokenizer, seq_len, batch_size):
    ds = tflm.data.lm_dataset(tflm.data.corpora.tiny_shakespeare(), tokenizer, seq_len, batch_size)
    start, tokens = time.perf_counter(), 0
    for x, _ in ds:
        tokens += int(np.prod(x.shape))
    return tokens / (time.perf_counter() - start), tokens


def training_tokens_per_second(seq_len, batch_size, steps):
    model = tflm.GPT.from_preset("shakespeare-char")
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, (batch_size * steps, seq_len)).astype("int32")
    model.fit(x[:batch_size], x[:batch_size], batch_size=batch_size, epochs=1, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    return batch_size * steps * seq_len / (time.perf_counter() - start), model.count_params()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bpe-vocabulary", type=int, default=4096)
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args()

    text = tflm.data.corpora.tiny_shakespeare().read_text()
    start = time.perf_counter()
    bpe = BPETokenizer.train(text, vocabulary_size=args.bpe_vocabulary)
    bpe_train_seconds = time.perf_counter() - start

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"keras {keras.__version__}, backend {keras.backend.backend()}")
    print(f"seq_len {args.seq_len}, batch {args.batch_size}")
    rows = []
    for name, tokenizer in [("byte", ByteTokenizer()), (f"bpe-{args.bpe_vocabulary}", bpe)]:
        rate, tokens = pipeline_tokens_per_second(tokenizer, args.seq_len, args.batch_size)
        rows.append((f"lm_dataset, {name} tokenizer ({tokens:,} tokens/epoch)", rate))
    train_rate, params = training_tokens_per_second(args.seq_len, args.batch_size, args.train_steps)
    rows.append((f"model.fit, shakespeare-char preset ({params / 1e6:.2f}M params, jit)", train_rate))
    for label, rate in rows:
        print(f"{label:64s} {rate:12,.0f} tokens/s  ({rate / train_rate:6.1f}x training)")
    print(f"BPE training, {args.bpe_vocabulary} tokens on tiny Shakespeare: {bpe_train_seconds:.1f} s")


if __name__ == "__main__":
    main()
