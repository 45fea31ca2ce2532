"""Where a decode step's time goes on CPU: one compiled step of a GPT-2-small-shaped GPT on
TensorFlow's XLA and on JAX, and its blocks' matrix products alone in each and in PyTorch.

- step: `model(token, cache=..., cache_index=40)` and an argmax, batch 1, a 128-position
  cache, compiled alone (no decode loop) with `tf.function(jit_compile=True)` or `jax.jit`,
  each backend in a fresh process;
- products: the 48 float32 matrix-vector products of GPT-2 small's 12 blocks (768 -> 2304,
  768 -> 768, 768 -> 3072, 3072 -> 768; 340 MB of weights), chained so none is skipped,
  compiled by TensorFlow's XLA and by JAX, and run eagerly by PyTorch; alone, then with
  their biases added as `keras.layers.Dense` adds them (`x @ w + b`) and as `tflm.layers.Dense`
  does (`x @ w - (-b)`, which TensorFlow's XLA does not fuse into the product).

Milliseconds, the best of 30 calls after a first.

    python benchmarks/decode_step.py
"""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEP = textwrap.dedent("""
    import json, time
    import numpy as np, keras
    from keras import ops
    import tflm

    model = tflm.GPT.from_preset("gpt2-124m")
    cache = model.init_cache(1, 128)
    token = ops.convert_to_tensor(np.ones((1, 1), "int32"))

    def step(token, cache, index):
        logits, cache = model(token, cache=cache, cache_index=index)
        return ops.argmax(logits[:, 0], -1), cache

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        compiled = tf.function(step, jit_compile=True)
        run = lambda: compiled(token, cache, tf.constant(40))
    else:
        import jax

        @jax.jit
        def stateless(values, token, cache, index):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return step(token, cache, index)

        values = [v.value for v in model.variables]
        run = lambda: stateless(values, token, cache, 40)
    np.asarray(run()[0])
    times = []
    for _ in range(30):
        start = time.perf_counter()
        np.asarray(run()[0])
        times.append(time.perf_counter() - start)
    print(json.dumps(min(times) * 1000))
""")

PRODUCTS = textwrap.dedent("""
    import json, sys, time
    import numpy as np

    library, bias = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
    weights = [rng.normal(size=s).astype("float32") * 0.02 for s in shapes]
    biases = [rng.normal(size=s[1]).astype("float32") * 0.02 for s in shapes]

    def chain(x, weights, matmul, mean):
        for w, b in zip(weights, biases):  # each result feeds the next product of its width
            y = matmul(x if w.shape[0] == 768 else h, w)
            if bias != "none":
                y = y + b if bias == "add" else y - (-b)
            if y.shape[-1] == 3072:
                h = y
            else:
                x = x + mean(y) * 1e-9 if y.shape[-1] == 2304 else y
        return x

    if library == "tensorflow":
        import tensorflow as tf
        ws, biases = [tf.constant(w) for w in weights], [tf.constant(b) for b in biases]
        run = tf.function(lambda x: chain(x, ws, tf.matmul, tf.reduce_mean), jit_compile=True)
        x = tf.ones((1, 768))
    elif library == "jax":
        import jax, jax.numpy as jnp
        ws, biases = [jnp.asarray(w) for w in weights], [jnp.asarray(b) for b in biases]
        run = jax.jit(lambda x: chain(x, ws, jnp.matmul, jnp.mean))
        x = jnp.ones((1, 768))
    else:
        import torch
        ws, biases = [torch.from_numpy(w) for w in weights], [torch.from_numpy(b) for b in biases]
        run = lambda x: chain(x, ws, torch.matmul, torch.mean)
        x = torch.ones(1, 768)
    np.asarray(run(x))
    times = []
    for _ in range(30):
        start = time.perf_counter()
        np.asarray(run(x))
        times.append(time.perf_counter() - start)
    print(json.dumps(min(times) * 1000))
""")


def run(code, *args, backend=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    if backend:
        env["KERAS_BACKEND"] = backend
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            env=env)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    print("GPT-2 small shapes, float32, batch 1; ms, the best of 30 calls")
    print("| what | TensorFlow XLA | JAX | PyTorch |")
    print("|---|---:|---:|---:|")
    tf_step, jax_step = (run(STEP, backend=b) for b in ("tensorflow", "jax"))
    print(f"| one compiled decode step (cache of 128) | {tf_step:.1f} | {jax_step:.1f} | - |")
    for bias, what in (("none", ""), ("add", ", + bias"), ("subtract", ", - (-bias)")):
        products = [run(PRODUCTS, library, bias) for library in ("tensorflow", "jax", "torch")]
        print(f"| the blocks' 48 matrix-vector products (340 MB){what} | "
              + " | ".join(f"{ms:.1f}" for ms in products) + " |")


if __name__ == "__main__":
    main()
