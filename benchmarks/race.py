"""The 10-minute race on tiny Shakespeare: `tflm train`'s default against nanoGPT's recipe.

One after the other, for the same wall-time budget counted from each process's start
(imports, data, compilation and evaluations included):

- `tflm train` with no configuration (configs/shakespeare-char.yaml: 4 x 4 x 192, RoPE,
  SwiGLU, RMSNorm, context 128, batch 32, AdamW 3e-3 fitted to the budget), validating
  every 250 steps on the whole held-out last 10%;
- nanoGPT's recipe in PyTorch: its GPT (learned positions, GELU MLP 4x wide, LayerNorm,
  biases, tied head; the model of train_throughput.py) at 4 layers x 6 heads x 192,
  context 128, batch 24 of random windows, AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1
  on matrices), 100 warmup steps then a cosine to 1e-4, gradient clipping 1.0, dropout 0.
  nanoGPT's schedule counts steps: its length is fitted to the budget from the speed of
  the first 50 steps. It validates on the same whole held-out 10% every 250 steps and when
  the budget runs out.

Prints each validation of both against wall time, then, at each validation of either
after the first minute, whether tflm's curve (interpolated) lies below nanoGPT's.

    python benchmarks/race.py [--minutes 10]
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tflm" / "data" / "corpora" / "tiny_shakespeare.txt"

NANOGPT = textwrap.dedent("""
    import json, math, sys, time
    START = time.time()
    import numpy as np
    import torch
    from torch.nn import functional as F
    sys.path.insert(0, sys.argv[1])
    from train_throughput import torch_model

    budget, corpus = float(sys.argv[2]), sys.argv[3]
    text = open(corpus, encoding="utf-8").read()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], np.int64)  # 65 characters
    cut = int(0.9 * len(ids))
    train, val = torch.from_numpy(ids[:cut]), torch.from_numpy(ids[cut:])
    context, batch, width = 128, 24, 192
    shape = dict(vocab_size=len(chars), num_layers=4, num_heads=6, hidden_dim=width,
                 intermediate_dim=4 * width, seq_len=context)
    torch.manual_seed(0)
    model = torch_model(shape)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": rest, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(0)

    def rate(step, total):  # nanoGPT's get_lr
        if step < 100:
            return 1e-3 * (step + 1) / 101
        ratio = min(1.0, (step - 100) / max(1, total - 100))
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    @torch.no_grad()
    def validation_loss():  # the whole held-out text in windows of the context
        model.eval()
        windows = (len(val) - 1) // context
        x = val[: windows * context].view(windows, context)
        y = val[1 : windows * context + 1].view(windows, context)
        total = sum(model(x[i:i + 256], y[i:i + 256]).item() * len(x[i:i + 256])
                    for i in range(0, windows, 256))
        model.train()
        return total / windows

    def emit(step, loss):
        print(json.dumps({"seconds": time.time() - START, "step": step, "val_loss": loss}), flush=True)

    step, total, reserve = 0, None, 15.0  # as tflm train keeps 15 s for its final evaluation
    while True:
        if total is None and step == 50:  # fit the schedule's length to the budget
            per_step = (time.time() - began) / 40
            total = int((budget - (time.time() - START) - reserve) / per_step) + step
        if total is not None and step >= total or time.time() - START + reserve > budget:
            break
        if step == 10:
            began = time.time()  # the first steps are slower: time from the 10th
        for group in optimizer.param_groups:
            group["lr"] = rate(step, total or 10**9)
        starts = torch.randint(len(train) - context - 1, (batch,), generator=generator)
        x = torch.stack([train[s:s + context] for s in starts])
        y = torch.stack([train[s + 1:s + 1 + context] for s in starts])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 250 == 0:
            evaluated = time.time()
            emit(step, validation_loss())
            reserve = time.time() - evaluated  # leave room for the final validation
    emit(step, validation_loss())
""")


def run_tflm(minutes, directory):
    """[(seconds, step, val_loss)] of `tflm train`, timed from the command's start."""
    command = [sys.executable, "-m", "tflm", "train", "--set", f"output.dir={directory}",
               "--set", f"train.max_minutes={minutes - 0.25}", "--set", "train.verbose=2"]
    start = time.time()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=directory)
    points, step = [], 0
    for line in process.stdout:
        seconds = time.time() - start
        found = re.search(r"val_loss: ([0-9.]+)", line)
        if found:
            step += 250
            points.append((seconds, step, float(found.group(1))))
        final = re.search(r"Trained to step (\d+)", line)
        if final and points:  # the last validation ended a shorter interval
            points[-1] = (points[-1][0], int(final.group(1)), points[-1][2])
    if process.wait():
        sys.exit("tflm train failed")
    return points


def run_nanogpt(minutes):
    done = subprocess.run([sys.executable, "-c", NANOGPT, str(ROOT / "benchmarks"),
                           str(minutes * 60), str(CORPUS)], capture_output=True, text=True)
    if done.returncode:
        sys.exit("nanoGPT's recipe failed:\n" + done.stderr[-3000:])
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [(row["seconds"], row["step"], row["val_loss"]) for row in rows]


def interpolate(points, seconds):
    """The curve's loss at `seconds` (linear between validations); None outside it."""
    for (t0, _, a), (t1, _, b) in zip(points, points[1:]):
        if t0 <= seconds <= t1:
            return a + (b - a) * (seconds - t0) / (t1 - t0)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    import torch

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); budget {args.minutes} minutes each", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        tflm = run_tflm(args.minutes, directory)
    nanogpt = run_nanogpt(args.minutes)
    for name, points in (("tflm train (default)", tflm), ("nanoGPT recipe (PyTorch)", nanogpt)):
        print(f"\n{name}\n| seconds | step | validation loss |\n|---:|---:|---:|")
        for seconds, step, loss in points:
            print(f"| {seconds:.0f} | {step} | {loss:.4f} |")
    print("\n| at (s) | whose validation | tflm | nanoGPT | tflm lower |\n|---:|---|---:|---:|---|")
    verdicts = []
    for whose, points in (("tflm", tflm), ("nanoGPT", nanogpt)):
        for seconds, _, _ in points:
            ours, theirs = interpolate(tflm, seconds), interpolate(nanogpt, seconds)
            if seconds < 60 or ours is None or theirs is None:
                continue
            verdicts.append(ours < theirs)
            print(f"| {seconds:.0f} | {whose} | {ours:.4f} | {theirs:.4f} | "
                  f"{'yes' if ours < theirs else 'NO'} |")
    print(f"\nfinal: tflm {tflm[-1][2]:.4f} at {tflm[-1][0]:.0f} s, nanoGPT {nanogpt[-1][2]:.4f} "
          f"at {nanogpt[-1][0]:.0f} s; tflm lower at {sum(verdicts)} of {len(verdicts)} points")


if __name__ == "__main__":
    main()
