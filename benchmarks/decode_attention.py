"""A decode step's attention over the cache on CPU, in TensorFlow's XLA: `keras.ops.dot_product_attention`
against the elementwise form `MultiHeadAttention` takes for one new token (`_one_query_attention`).

GPT-2 small's shapes (12 layers, 12 heads of 64) by default: a loop of 20 compiled steps, each
writing one new key and value into every layer's (B, 2, S, N, H) cache at the next position
and attending over it with one query, as a decode step does (no projections, no head).

Milliseconds a step (all layers), the best of 10 calls after a first.

    python benchmarks/decode_attention.py [--batch 1 8] [--length 320] [--heads 12] [--layers 12]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from tflm.layers import MultiHeadAttention

STEPS = 20


def dot_product_attention(q, k, v, mask):
    return keras.ops.dot_product_attention(q, k, v, mask=mask[None, None, None, :])


def one_query_form(heads, head_dim):
    """The layer's own decode-step form, `MultiHeadAttention._one_query_attention`."""
    layer = MultiHeadAttention(num_heads=heads, causal=True)
    layer.build((None, None, heads * head_dim))
    return lambda q, k, v, mask: layer._one_query_attention(q, k, v, mask[None, None, None, :])


def milliseconds_a_step(attention, batch, length, heads, layers, head_dim=64):
    rng = np.random.default_rng(0)
    caches = [tf.constant(rng.normal(size=(batch, 2, length, heads, head_dim)), tf.float32)
              for _ in range(layers)]
    query = tf.constant(rng.normal(size=(batch, 1, heads, head_dim)), tf.float32)

    @tf.function(jit_compile=True)
    def loop(q, caches):
        def step(i, q, caches):
            position = i + 16
            mask = tf.range(length) <= position
            updated = []
            for cache in caches:
                cache = keras.ops.slice_update(cache, (0, 0, position, 0, 0), tf.stack([q, 2 * q], 1))
                q = attention(q, cache[:, 0], cache[:, 1], mask)
                updated.append(cache)
            return i + 1, q, updated

        return tf.while_loop(lambda i, q, c: i < STEPS, step, (0, q, caches))[1]

    loop(query, caches).numpy()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        loop(query, caches).numpy()
        times.append(time.perf_counter() - start)
    return 1000 * min(times) / STEPS


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--length", type=int, default=320, help="cache positions")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, XLA on CPU; cache of {args.length}, {args.layers} layers "
          f"x {args.heads} heads of 64; ms a step, best of 10 x {STEPS} steps")
    print(f"{'batch':>5s} {'dot_product_attention':>22s} {'one-query form':>15s} {'speed-up':>9s}")
    for batch in args.batch:
        shapes = (batch, args.length, args.heads, args.layers)
        fused = milliseconds_a_step(dot_product_attention, *shapes)
        ours = milliseconds_a_step(one_query_form(args.heads, 64), *shapes)
        print(f"{batch:5d} {fused:22.2f} {ours:15.2f} {fused / ours:8.2f}x")


if __name__ == "__main__":
    main()
