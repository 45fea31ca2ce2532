"""The token cross-entropy and its gradients, from whole logits and chunk by chunk: memory and time.

The output projection and loss of a GPT-2-sized vocabulary (768 -> 50,304) for `--tokens`
tokens: Keras' SparseCategoricalCrossentropy on the whole float32 logits, against
`tflm.models.losses.chunked_token_cross_entropy` (what `GPT.compile(loss_chunk_size=N)`
trains with), each differentiated with respect to the hidden states and the projection,
compiled, in a fresh process (JAX backend, CPU unless a GPU is present). Prints the
process's peak resident memory above what it held before the first call (CPU) or the
device's peak (GPU), seconds a call (best of 3 after the first), and the largest
difference of value and gradients against the plain loss.

    python benchmarks/chunked_loss.py [--tokens 4096] [--chunk-sizes 1024 4096]
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import jax, keras
    from tflm.models.losses import chunked_token_cross_entropy

    tokens, chunk = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    hidden = jax.numpy.asarray(rng.normal(size=(tokens, 768)).astype("float32"))
    kernel = jax.numpy.asarray(rng.normal(0, 0.02, (768, 50304)).astype("float32"))
    targets = jax.numpy.asarray(rng.integers(0, 50304, tokens).astype("int32"))
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(h, k):
        if chunk == 0:
            return plain(targets, h @ k)
        return chunked_token_cross_entropy(h, k, targets, chunk_size=chunk)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    def resident():
        with open("/proc/self/status") as status:
            text = status.read()
        return {field: int(text.split(field + ":")[1].split()[0]) * 1024
                for field in ("VmRSS", "VmHWM")}

    step.lower(hidden, kernel).compile()  # compiled before the memory baseline
    before = resident()["VmRSS"]
    value, grads = step(hidden, kernel)
    jax.block_until_ready(grads)
    times = []
    for _ in range(3):
        began = time.perf_counter()
        jax.block_until_ready(step(hidden, kernel))
        times.append(time.perf_counter() - began)
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform == "gpu" else None
    np.save(sys.argv[3], np.concatenate([np.ravel(value), np.ravel(grads[0]), np.ravel(grads[1])]))
    print(json.dumps({"seconds": min(times), "device": device.platform,
                      "peak": stats["peak_bytes_in_use"] if stats else resident()["VmHWM"] - before}))
""")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args()
    import tempfile

    import numpy as np

    env = {**os.environ, "KERAS_BACKEND": "jax"}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for chunk in [0, *args.chunk_sizes]:
            out = os.path.join(scratch, f"{chunk}.npy")
            done = subprocess.run([sys.executable, "-c", WORKER, str(args.tokens), str(chunk), out],
                                  capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["values"] = np.load(out)
            rows.append((chunk, result))
    reference = rows[0][1]["values"]
    print(f"{args.tokens} tokens x 768 -> 50,304, float32, JAX on {rows[0][1]['device']}; "
          f"whole logits: {args.tokens * 50304 * 4 / 2**20:,.0f} MiB")
    print("| loss | peak memory MiB | s a call | largest difference from the plain loss |")
    print("|---|---:|---:|---:|")
    for chunk, result in rows:
        label = "Keras cross-entropy on whole logits" if chunk == 0 else f"chunked, {chunk} tokens"
        difference = float(np.max(np.abs(result["values"] - reference)))
        print(f"| {label} | {result['peak'] / 2**20:,.0f} | {result['seconds']:.2f} | "
              f"{difference:.1e} |")


if __name__ == "__main__":
    main()
