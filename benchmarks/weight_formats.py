"""Matrix-vector products with float32, bfloat16 and int8 weights on this CPU: can a decode
step read fewer weight bytes and go faster?

Decoding at batch 1 reads every weight once a token, so int8 or bfloat16 weights could
halve or quarter its time. This times what a decode step's matrix products would become:
24 products of a (M, 768) activation with (768, 3072) weights (226 MB in float32, more
than the caches hold), each result folded back into the activation so none is skipped,
for M = 1 and 8 rows, in
- float32 weights (what tflm decodes with);
- bfloat16 weights and activations, float32 results;
- int8 weights with per-column scales, converted to float32 in the product (weight-only);
- int8 weights and activations quantized per row on the fly, int32 products (Keras'
  `quantize("int8")` computes this way);
compiled with XLA on TensorFlow (`jit_compile=True`, as tflm's decode loop) and JAX
(`jax.jit`, in a subprocess), and in TensorFlow graph mode (oneDNN kernels, no XLA).
Prints ms per 24 products (best of 5 x 10 calls) and the speed-up over XLA float32.

    python benchmarks/weight_formats.py
"""

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

LAYERS, WIDTH, INNER = 24, 768, 3072

JAX_SIDE = """
import json, sys, time
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[1])
from weight_formats import best_seconds, weights
float32, bfloat16, (int8, scales) = weights()
float32 = [jnp.asarray(w) for w in float32]
bfloat16 = [jnp.asarray(w, jnp.bfloat16) for w in bfloat16]
int8, scales = [jnp.asarray(w) for w in int8], [jnp.asarray(s) for s in scales]

def f32(x, float32, bfloat16, int8, scales):
    for w in float32:
        x = x + (x @ w)[:, :768]
    return x

def bf16(x, float32, bfloat16, int8, scales):
    for w in bfloat16:
        x = x + jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)[:, :768]
    return x

def weight_only(x, float32, bfloat16, int8, scales):
    for w, s in zip(int8, scales):
        x = x + (x @ w.astype(jnp.float32) * s)[:, :768]
    return x

def int8_products(x, float32, bfloat16, int8, scales):
    for w, s in zip(int8, scales):
        a = jnp.max(jnp.abs(x), axis=1, keepdims=True) / 127
        q = jnp.round(x / a).astype(jnp.int8)
        x = x + (jnp.dot(q, w, preferred_element_type=jnp.int32).astype(jnp.float32) * a * s)[:, :768]
    return x

out = {}
for rows in (1, 8):
    x = jnp.ones((rows, 768), jnp.float32) * 0.01
    for name, fn in [("float32", f32), ("bfloat16", bf16), ("int8 weight-only", weight_only),
                     ("int8 x int8", int8_products)]:
        compiled = jax.jit(fn)  # the weights are arguments, as a model's variables
        out[f"{name}|{rows}"] = best_seconds(
            lambda: compiled(x, float32, bfloat16, int8, scales).block_until_ready())
print(json.dumps(out))
"""


def weights():
    """float32 weights, their bfloat16 copies (as float32 arrays), int8 weights and scales."""
    rng = np.random.default_rng(0)
    float32 = [rng.normal(0, 0.02, (WIDTH, INNER)).astype("float32") for _ in range(LAYERS)]
    scales = [np.abs(w).max(0) / 127 for w in float32]
    int8 = [np.round(w / s).astype("int8") for w, s in zip(float32, scales)]
    return float32, float32, (int8, scales)


def best_seconds(fn, repeats=5, calls=10):
    fn()
    fn()  # compiled and warm
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def tensorflow_side():
    import tensorflow as tf

    float32, _, (int8, scales) = weights()
    # variables, as a model's weights: constants could be folded at compile time
    f32 = [tf.Variable(w) for w in float32]
    bf16 = [tf.Variable(tf.cast(w, tf.bfloat16)) for w in float32]
    q = [tf.Variable(w) for w in int8]
    s = [tf.Variable(v.astype("float32")) for v in scales]

    def f32_products(x):
        for w in f32:
            x = x + tf.matmul(x, w)[:, :WIDTH]
        return x

    def bf16_products(x):
        for w in bf16:
            x = x + tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), w), tf.float32)[:, :WIDTH]
        return x

    def weight_only(x):
        for w, scale in zip(q, s):
            x = x + (tf.matmul(x, tf.cast(w, tf.float32)) * scale)[:, :WIDTH]
        return x

    out = {}
    for rows in (1, 8):
        x = tf.ones((rows, WIDTH)) * 0.01
        for name, fn in [("float32", f32_products), ("bfloat16", bf16_products),
                         ("int8 weight-only", weight_only)]:
            for jit, label in ((True, "XLA"), (False, "graph")):
                compiled = tf.function(fn, jit_compile=jit)
                out[f"{name}|{rows}|{label}"] = best_seconds(lambda: compiled(x))
    return out, tf.__version__


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    here = os.path.dirname(os.path.abspath(__file__))
    jax_run = subprocess.run([sys.executable, "-c", JAX_SIDE, here], capture_output=True,
                             text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if jax_run.returncode:
        sys.exit(jax_run.stderr[-3000:])
    jax_times = json.loads(jax_run.stdout.strip().splitlines()[-1])
    tf_times, version = tensorflow_side()
    print(f"{LAYERS} products of (M, {WIDTH}) x ({WIDTH}, {INNER}); {platform.machine()}, "
          f"{os.cpu_count()} cores, TensorFlow {version}")
    for rows in (1, 8):
        base = tf_times[f"float32|{rows}|XLA"]
        print(f"\nM = {rows}: ms per 24 products (speed-up over TensorFlow XLA float32)")
        print("| weights | TensorFlow XLA | TensorFlow graph (oneDNN) | JAX |")
        print("|---|---:|---:|---:|")
        for name in ("float32", "bfloat16", "int8 weight-only", "int8 x int8"):
            cells = []
            for key in (f"{name}|{rows}|XLA", f"{name}|{rows}|graph"):
                cells.append(f"{tf_times[key] * 1e3:.1f} ({base / tf_times[key]:.2f}x)"
                             if key in tf_times else "-")
            jax_seconds = jax_times.get(f"{name}|{rows}")
            cells.append(f"{jax_seconds * 1e3:.1f} ({base / jax_seconds:.2f}x)")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
