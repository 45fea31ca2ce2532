"""Decoding speed on CPU: tflm's compiled cached loop against keras-hub's GPT2CausalLM, and
against transformers (PyTorch) on an imported Llama-family checkpoint.

For a GPT of GPT-2-small shape (random weights) and one of the shakespeare-char preset's
shape, generate 256 new tokens from a 16-token prompt, greedy, at batch 1 and 8, and print
tokens/s of each library side by side (the best of 3 warm calls of each): tflm, keras-hub's
GPT2CausalLM and transformers' GPT2LMHeadModel (PyTorch, float32, in a subprocess) of the
same shapes. Also prints the
memory-bandwidth floor at batch 1 (parameter bytes / the read rate of numpy's float32
matrix-vector product on 1 GiB: each token must read every weight once) and tflm's time per
token for 64 against 512 new tokens.

`smollm-135m`: transformers writes a LlamaForCausalLM of SmolLM-135M's shapes (random
weights, bfloat16 as SmolLM ships) in a subprocess and times its own greedy `generate`
(float32, PyTorch's threads); tflm imports that checkpoint with `from_huggingface` and
times its own. A fresh subprocess measures the import's memory: its resident set before,
at its peak during and after `from_huggingface`.

    python benchmarks/generation.py [--new-tokens 256] [--quick]
    python benchmarks/generation.py --models smollm-135m --new-tokens 32
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

import keras
import keras_hub
import numpy as np

import tflm
from tflm.convert import from_huggingface

SHAPES = {
    "gpt2-124m": dict(vocab_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                      intermediate_dim=3072, max_sequence_length=1024),
    # the preset's shapes with a 512-token context, so that 16 + 256 tokens fit
    "shakespeare-char": dict(vocab_size=65, num_layers=4, num_heads=4, hidden_dim=256,
                             intermediate_dim=768, max_sequence_length=512),
}

# HuggingFaceTB/SmolLM-135M's config.json, as transformers' LlamaConfig arguments
SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                   rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                   bos_token_id=0, eos_token_id=0)

REPEATS = 3  # short runs on a shared machine: each side's best of a few warm calls

# Run by a subprocess (torch and TensorFlow in one process can crash): write the checkpoint,
# then time transformers' greedy generate on it, as the tflm side is timed.
TRANSFORMERS_SIDE = textwrap.dedent("""
    import json, sys, time
    import torch
    import transformers

    job = json.loads(sys.argv[1])
    torch.manual_seed(0)
    if job["architecture"] == "llama":  # written as a checkpoint for tflm to import
        config = transformers.LlamaConfig(**job["config"])
        transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(job["directory"])
        model = transformers.AutoModelForCausalLM.from_pretrained(job["directory"], dtype=torch.float32)
    else:  # GPT-2 of the shapes that tflm and keras-hub run, random weights
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**job["config"]))
    model = model.eval()
    model.generation_config.eos_token_id = None  # every row decodes all its new tokens
    model.generation_config.pad_token_id = 0
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__,
           "transformers": transformers.__version__, "seconds": {}}
    for batch, prompts in job["prompts"].items():
        ids = torch.tensor(prompts)
        times = []
        for _ in range(1 + job["repeats"]):  # a warm-up call, then the best of the others
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=job["new_tokens"], min_new_tokens=job["new_tokens"])
            times.append(time.perf_counter() - start)
        out["seconds"][batch] = min(times[1:])
    print(json.dumps(out))
""")

# Run by a fresh subprocess: resident memory in MiB before, at the peak of and after the
# import of a checkpoint directory, or (given a GPT config instead) after building that
# architecture with fresh weights, the floor an import cannot go below.
MEMORY = textwrap.dedent("""
    import json, os, sys, time
    from tflm.convert import from_huggingface
    from tflm.models import GPT

    def resident_mib(field="VmRSS"):  # VmHWM: the peak (ru_maxrss would carry the parent's over)
        with open("/proc/self/status") as status:
            return int(status.read().split(field + ":")[1].split()[0]) / 1024

    before, start = resident_mib(), time.perf_counter()
    if os.path.isdir(sys.argv[1]):
        model = from_huggingface(sys.argv[1])
    else:
        model = GPT.from_config(json.loads(sys.argv[1]))
        model.build((None, None))
    peak = resident_mib("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "after": resident_mib(),
                      "seconds": time.perf_counter() - start,
                      "parameters": model.count_params(), "config": model.get_config()}))
""")


READ_RATE = textwrap.dedent("""
    import json, time
    import numpy as np

    matrix = np.ones(((1 << 30) // 4 // 32768, 32768), np.float32)
    vector = np.ones((1, matrix.shape[0]), np.float32)
    best = float("inf")
    for _ in range(8):
        start = time.perf_counter()
        vector @ matrix
        best = min(best, time.perf_counter() - start)
    print(json.dumps(matrix.nbytes / best))
""")


def read_bandwidth():
    """Bytes per second read by numpy's BLAS in a float32 matrix-vector product of 1 GiB
    of matrix (best of 8): the access pattern of a decode step. Measured in a fresh
    process: after TensorFlow's import, numpy's BLAS here read at half the rate (15.2
    against 26-29 GB/s), which put the floor above tflm's measured time; a numpy sum on
    one core also reads well below the memory's bandwidth."""
    return run_json(READ_RATE)


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


def time_call(fn, repeats=REPEATS):
    """The best of `repeats` warm calls' seconds, after a first call (it compiles)."""
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def transformers_seconds(name, prompts, new_tokens):
    """{batch: seconds} of transformers' GPT2LMHeadModel (PyTorch, float32) of `name`'s
    shapes, timed as tflm and keras-hub are; None without transformers."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    shape = SHAPES[name]
    config = dict(vocab_size=shape["vocab_size"], n_layer=shape["num_layers"],
                  n_head=shape["num_heads"], n_embd=shape["hidden_dim"],
                  n_inner=shape["intermediate_dim"], n_positions=shape["max_sequence_length"])
    result = run_json(TRANSFORMERS_SIDE, json.dumps(dict(
        architecture="gpt2", config=config, prompts=prompts, new_tokens=new_tokens,
        repeats=REPEATS)))
    return result["seconds"]


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


def run_json(code, *args):
    """Run `code` in a fresh Python with `args`; the JSON it prints last."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def smollm(args, rng, bandwidth):
    """tflm against transformers on a SmolLM-135M-shaped Llama checkpoint, and the import's memory."""
    vocab = SMOLLM_135M["vocab_size"]
    prompts = {batch: rng.integers(0, vocab, (batch, args.prompt_tokens)).tolist() for batch in (1, 8)}
    with tempfile.TemporaryDirectory() as directory:
        theirs = run_json(TRANSFORMERS_SIDE, json.dumps(dict(
            architecture="llama", config=SMOLLM_135M, directory=directory, prompts=prompts, new_tokens=args.new_tokens,
            repeats=REPEATS)))
        size = os.path.getsize(os.path.join(directory, "model.safetensors"))
        memory = run_json(MEMORY, directory)
        model = from_huggingface(directory)
    built = run_json(MEMORY, json.dumps(memory["config"]))
    print(f"smollm-135m: transformers {theirs['transformers']}, torch {theirs['torch']} "
          f"({theirs['threads']} threads), float32; greedy, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, best of {REPEATS} warm calls")
    print(f"{'model':18s} {'batch':>5s} {'tflm tok/s':>11s} {'transformers tok/s':>19s} {'ratio':>6s}")
    for batch, rows in prompts.items():
        seconds = time_call(lambda: model.generate(rows, args.new_tokens, stop_tokens=[]))
        ours = batch * args.new_tokens / seconds
        other = batch * args.new_tokens / theirs["seconds"][str(batch)]
        print(f"{'smollm-135m':18s} {batch:5d} {ours:11.1f} {other:19.1f} {ours / other:5.2f}x")
    float32_mib = memory["parameters"] * 4 / 2**20
    floor_ms = memory["parameters"] * 4 / bandwidth * 1000
    print(f"smollm-135m: batch-1 floor {floor_ms:.1f} ms/token ({1000 / floor_ms:.1f} tokens/s)")
    print(f"smollm-135m import: {memory['seconds']:.1f} s; {memory['parameters']:,} parameters ({float32_mib:.0f} MiB in "
          f"float32) from a {size / 2**20:.0f} MiB bfloat16 model.safetensors; resident memory "
          f"{memory['before']:.0f} MiB before, peak {memory['peak']:.0f} MiB "
          f"(+{memory['peak'] - memory['before']:.0f}), {memory['after']:.0f} MiB after "
          f"(+{memory['after'] - memory['before']:.0f}); building the same GPT with fresh "
          f"weights: peak +{built['peak'] - built['before']:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="shakespeare-char shape only")
    parser.add_argument("--models", nargs="+", choices=[*SHAPES, "smollm-135m"],
                        default=["shakespeare-char", "gpt2-124m", "smollm-135m"])
    args = parser.parse_args()
    models = ["shakespeare-char"] if args.quick else args.models

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; keras {keras.__version__}, "
          f"keras-hub {keras_hub.__version__}, backend {keras.backend.backend()}")
    bandwidth = read_bandwidth()
    print(f"measured read rate of a float32 matrix-vector product (numpy, 1 GiB): {bandwidth / 1e9:.1f} GB/s")
    header = (f"{'model':18s} {'batch':>5s} {'tflm tok/s':>11s} {'keras-hub tok/s':>16s} "
              f"{'ratio':>6s} {'transformers tok/s':>19s} {'ratio':>6s} {'tflm ms/tok':>11s}")
    rng = np.random.default_rng(0)
    if any(name in SHAPES for name in models):
        print(f"greedy, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, best of "
              f"{REPEATS} warm calls; transformers: GPT2LMHeadModel of the same shapes, float32")
        print(header)
    for name in [name for name in models if name in SHAPES]:
        model, lm = tflm_model(name), keras_hub_model(name)
        model.build((1, 8))
        prompts = {batch: rng.integers(0, SHAPES[name]["vocab_size"], (batch, args.prompt_tokens))
                   for batch in (1, 8)}
        torch_seconds = transformers_seconds(
            name, {batch: rows.tolist() for batch, rows in prompts.items()}, args.new_tokens)
        for batch, rows in prompts.items():
            ours = batch * args.new_tokens / tflm_seconds(model, rows.tolist(), args.new_tokens)
            theirs = batch * args.new_tokens / keras_hub_seconds(lm, rows, args.new_tokens)
            torch_rate = (batch * args.new_tokens / torch_seconds[str(batch)]
                          if torch_seconds else float("nan"))
            print(f"{name:18s} {batch:5d} {ours:11.1f} {theirs:16.1f} {ours / theirs:5.2f}x "
                  f"{torch_rate:19.1f} {ours / torch_rate:5.2f}x {1000 * batch / ours:11.1f}")
        floor_ms = model.count_params() * 4 / bandwidth * 1000
        print(f"{name}: {model.count_params():,} float32 parameters; batch-1 floor "
              f"{floor_ms:.1f} ms/token ({1000 / floor_ms:.1f} tokens/s)")
        if name == "gpt2-124m" or args.quick:
            prompt = rng.integers(0, SHAPES[name]["vocab_size"], (1, args.prompt_tokens)).tolist()
            for new in (64, min(512, SHAPES[name]["max_sequence_length"] - args.prompt_tokens - 1)):
                seconds = tflm_seconds(model, prompt, new)
                print(f"{name}: {new} new tokens at batch 1: {1000 * seconds / new:.1f} ms/token")
    if "smollm-135m" in models:
        smollm(args, rng, bandwidth)


if __name__ == "__main__":
    main()
