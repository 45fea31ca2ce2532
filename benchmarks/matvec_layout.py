"""Which weight layout does XLA's batch-1 matrix-vector product read fastest on this CPU?

A tied output head multiplies the hidden state by the token embedding transposed,
x @ E^T with E of shape (vocabulary, width): the product reads E across its rows. This
times that against the same product with the weights stored (width, vocabulary), for
GPT-2 small's head (50,257 x 768, 154 MB), and both layouts for its blocks' 48 products,
compiled with XLA on TensorFlow as tflm's decode loop is. Alternating runs; ms per call,
median and best of 50 warm calls.

    python benchmarks/matvec_layout.py
"""

import platform
import time

import numpy as np
import tensorflow as tf

WIDTH, VOCABULARY, LAYERS = 768, 50257, 12
BLOCK_SHAPES = [(WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)]


def timed(function, x, calls=50):
    function(x).numpy()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function(x).numpy()
        times.append(time.perf_counter() - start)
    return 1e3 * np.median(times), 1e3 * min(times)


def main():
    rng = np.random.default_rng(0)
    embedding = tf.Variable(rng.standard_normal((VOCABULARY, WIDTH), dtype=np.float32))
    embedding_t = tf.Variable(tf.transpose(embedding))
    kernels = [tf.Variable(rng.standard_normal(s, dtype=np.float32))
               for s in BLOCK_SHAPES * LAYERS]
    kernels_t = [tf.Variable(tf.transpose(k)) for k in kernels]
    x = tf.constant(rng.standard_normal((1, WIDTH), dtype=np.float32))

    @tf.function(jit_compile=True)
    def head_vocabulary_first(x):  # (V, D): as a tied head reads the embedding
        return tf.matmul(x, embedding, transpose_b=True)

    @tf.function(jit_compile=True)
    def head_width_first(x):  # (D, V)
        return tf.matmul(x, embedding_t)

    def blocks(weights, transposed):
        @tf.function(jit_compile=True)
        def run(x):
            total = 0.0
            for w in weights:
                inputs = x if w.shape[1 if transposed else 0] == WIDTH else tf.tile(x, [1, 4])
                total += tf.reduce_sum(tf.matmul(inputs, w, transpose_b=transposed))
            return total
        return run

    cases = [("head, (vocabulary, width), transpose_b", head_vocabulary_first),
             ("head, (width, vocabulary)", head_width_first),
             ("48 block products, (in, out)", blocks(kernels, False)),
             ("48 block products, (out, in), transpose_b", blocks(kernels_t, True))]
    print(f"{platform.machine()}, {platform.processor() or 'cpu'}, TensorFlow {tf.__version__}")
    for round_ in range(2):
        for name, function in cases:
            median, best = timed(function, x)
            print(f"round {round_ + 1}: {name}: median {median:.2f} ms, best {best:.2f} ms")


if __name__ == "__main__":
    main()
