"""Decoding speed on CPU: tflm's compiled cached loop against keras-hub's GPT2CausalLM.

For a GPT of GPT-2-small shape (random weights) and one of the shakespeare-char preset's
shape, generate 256 new tokens from a 16-token prompt, greedy, at batch 1 and 8, and print
tokens/s of each library side by side (second, warm call of each). Also prints the
memory-bandwidth floor at batch 1 (parameter bytes / measured read bandwidth: each token
must read every weight once) and tflm's time per token for 64 against 512 new tokens.

    python benchmarks/generation.py [--new-tokens 256] [--quick]
"""

import argparse
import os
import platform
import time

import keras
import keras_hub
import numpy as np

import tflm

SHAPES = {
    "gpt2-124m": dict(vocab_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                      intermediate_dim=3072, max_sequence_length=1024),
    # the preset's shapes with a 512-token context, so that 16 + 256 tokens fit
    "shakespeare-char": dict(vocab_size=65, num_layers=4, num_heads=4, hidden_dim=256,
                             intermediate_dim=768, max_sequence_length=512),
}


def read_bandwidth(size_bytes=1 << 30, repeats=5):
    """Bytes per second that numpy reads from memory (best of a few full sums)."""
    data = np.ones(size_bytes // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def tflm_model(name):
    if name == "gpt2-124m":
        return tflm.GPT.from_preset("gpt2-124m")
    return tflm.GPT.from_preset("shakespeare-char", tokenizer=None, max_sequence_length=512)


def keras_hub_model(name):
    shape = SHAPES[name]
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=shape["vocab_size"], num_layers=shape["num_layers"],
        num_heads=shape["num_heads"], hidden_dim=shape["hidden_dim"],
        intermediate_dim=shape["intermediate_dim"], max_sequence_length=shape["max_sequence_length"],
        dropout=0.0,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    return lm


def time_call(fn, calls=2):
    """Seconds of the last of `calls` calls (the first compiles)."""
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
    return elapsed


def tflm_seconds(model, prompts, new_tokens):
    # stop_tokens=[] so every row runs the full length, as keras-hub's does without an end token
    return time_call(lambda: model.generate(prompts, new_tokens, stop_tokens=[]))


def keras_hub_seconds(lm, prompts, new_tokens):
    batch, length = prompts.shape
    total = length + new_tokens
    ids = np.zeros((batch, total), "int32")
    ids[:, :length] = prompts
    mask = np.zeros((batch, total), bool)
    mask[:, :length] = True
    inputs = {"token_ids": ids, "padding_mask": mask}
    return time_call(lambda: lm.generate(inputs, max_length=total, stop_token_ids=None))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="shakespeare-char shape only")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; keras {keras.__version__}, "
          f"keras-hub {keras_hub.__version__}, backend {keras.backend.backend()}")
    bandwidth = read_bandwidth()
    print(f"measured memory read bandwidth: {bandwidth / 1e9:.1f} GB/s")
    print(f"greedy, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, warm call")
    header = f"{'model':18s} {'batch':>5s} {'tflm tok/s':>11s} {'keras-hub tok/s':>16s} {'ratio':>6s} {'tflm ms/tok':>11s}"
    print(header)
    rng = np.random.default_rng(0)
    for name in ["shakespeare-char"] if args.quick else ["shakespeare-char", "gpt2-124m"]:
        model, lm = tflm_model(name), keras_hub_model(name)
        model.build((1, 8))
        for batch in (1, 8):
            prompts = rng.integers(0, SHAPES[name]["vocab_size"], (batch, args.prompt_tokens))
            ours = batch * args.new_tokens / tflm_seconds(model, prompts.tolist(), args.new_tokens)
            theirs = batch * args.new_tokens / keras_hub_seconds(lm, prompts, args.new_tokens)
            print(f"{name:18s} {batch:5d} {ours:11.1f} {theirs:16.1f} {ours / theirs:5.2f}x "
                  f"{1000 * batch / ours:11.1f}")
        floor_ms = model.count_params() * 4 / bandwidth * 1000
        print(f"{name}: {model.count_params():,} float32 parameters; batch-1 floor "
              f"{floor_ms:.1f} ms/token ({1000 / floor_ms:.1f} tokens/s)")
        if name == "gpt2-124m" or args.quick:
            prompt = rng.integers(0, SHAPES[name]["vocab_size"], (1, args.prompt_tokens)).tolist()
            for new in (64, min(512, SHAPES[name]["max_sequence_length"] - args.prompt_tokens - 1)):
                seconds = tflm_seconds(model, prompt, new)
                print(f"{name}: {new} new tokens at batch 1: {1000 * seconds / new:.1f} ms/token")


if __name__ == "__main__":
    main()
