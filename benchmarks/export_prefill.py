"""Long-prompt latency of an exported GPT's `generate` signature, before and after block prefill.

Before (commit 61d763c) the export's decode loop fed a prompt's first 16 tokens in one
call and every further prompt token in a step of its own; now prompts fill the cache in
blocks of 64 tokens. The same GPT-2-small-shaped GPT (byte tokenizer, random weights, seed
0) is exported by both versions of tflm, each in a subprocess with its own checkout (a git
worktree of the earlier commit), without warm-up requests; this process loads both
SavedModels with TensorFlow alone and times `generate` on prompts of 64 to 512 tokens
with 16 new tokens, greedy, batch 1: the first call (it compiles) and the best of three
after it.

    python benchmarks/export_prefill.py [--before 61d763c] [--lengths 64 256 512]
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPORT = textwrap.dedent("""
    import sys
    import keras, numpy as np, tflm
    from tflm.tokenizers import ByteTokenizer
    keras.utils.set_random_seed(0)
    tokenizer = ByteTokenizer()
    model = tflm.GPT(tokenizer.vocabulary_size(), 12, 768, 1024, num_heads=12,
                     intermediate_dim=3072, tokenizer=tokenizer)
    model(np.zeros((1, 8), "int32"))
    options = {"warmup_batch_size": 0} if "warmup_batch_size" in tflm.export.saved_model.__code__.co_varnames else {}
    print(tflm.export.saved_model(model, sys.argv[1], **options))
""")


def export(source, directory):
    env = {**os.environ, "PYTHONPATH": str(source), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", EXPORT, str(directory)], env=env,
                          capture_output=True, text=True, cwd=source, timeout=1800)
    if done.returncode:
        sys.exit(f"export from {source} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="61d763c", help="the commit before block prefill")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="export-prefill-"))
    worktree = scratch / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree),
                    args.before], check=True, capture_output=True)
    try:
        paths = {"before": export(worktree, scratch / "before-export"),
                 "after": export(ROOT, scratch / "after-export")}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                       check=False)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401  (the earlier export's tokenizer may need its ops)
    except ImportError:
        pass
    text = (ROOT / "tflm" / "data" / "corpora" / "tiny_shakespeare.txt").read_text()
    print(f"GPT-2-small shape (12 x 768, byte vocabulary), greedy, batch 1, "
          f"{args.new_tokens} new tokens; {platform.machine()}, {os.cpu_count()} cores, "
          f"TensorFlow {tf.__version__}; before = {args.before}")
    print("| prompt tokens | before: first call s | before: warm s | after: first call s | "
          "after: warm s | warm speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    loaded = {label: tf.saved_model.load(path).signatures["generate"] for label, path in paths.items()}
    for length in args.lengths:
        prompt = tf.constant([text[:length]])  # bytes: one token a character of this text
        inputs = dict(prompts=prompt, max_new_tokens=tf.constant([args.new_tokens]),
                      temperature=tf.constant([0.0]), top_k=tf.constant([0]),
                      top_p=tf.constant([1.0]), seed=tf.constant([0]))
        row, outputs = [], {}
        for label, generate in loaded.items():
            began = time.perf_counter()
            outputs[label] = generate(**inputs)["completions"].numpy()
            first = time.perf_counter() - began
            warm = []
            for _ in range(3):
                began = time.perf_counter()
                generate(**inputs)
                warm.append(time.perf_counter() - began)
            row += [first, min(warm)]
        print(f"| {length} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f} | {row[3]:.2f} | "
              f"{row[1] / row[3]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
