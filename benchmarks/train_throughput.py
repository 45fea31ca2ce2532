"""Training throughput of tflm's GPT, side by side with keras-hub and PyTorch.

Times whole training steps (forward, token cross-entropy, backward, global-norm clipping,
AdamW) on random token ids, through `model.fit` for the Keras models. With `--compare`
the same shapes also run as keras-hub's `GPT2Backbone` (tied head, dropout 0) and, when
torch is installed, as a plain PyTorch GPT (nanoGPT's design, `torch.compile` on a GPU,
bf16 autocast with `--mixed-precision`), each in its own process so that peak memory is
its own. Prints tokens/s, ms/step, MFU, peak accelerator memory and the ratios.

    python benchmarks/train_throughput.py --config shakespeare-char --compare          # CPU
    python benchmarks/train_throughput.py --config nanogpt-shakespeare --compare
    KERAS_BACKEND=jax python benchmarks/train_throughput.py --config gpt2-124m \\
        --batch 16 --mixed-precision --compare                                         # GPU
    KERAS_BACKEND=jax python benchmarks/train_throughput.py --config gpt2-124m \\
        --seq-len 4096 --batch 4 --mixed-precision --remat-memory                      # remat
    KERAS_BACKEND=jax python benchmarks/train_throughput.py --config gpt2-124m \\
        --batch 16 --mixed-precision --loss-chunk-size 4096 --compare                  # loss

MFU = (6 N + 12 L H Q T) * tokens/s / peak, N the parameters without the position table
(nanoGPT's count), L layers, H heads, Q head size, T context, peak 989e12 (H100 bf16 dense).
"""

import argparse
import json
import os
import subprocess
import sys
import time

PEAK_FLOPS = 989e12

# Shapes (vocab, layers, heads, width, MLP width, context). The tflm model of each is built
# in GPT-2's architecture (learned positions, GELU, LayerNorm with biases, tied head) so
# that keras-hub's GPT2Backbone and the PyTorch GPT compute the same function; the
# `shakespeare-char` entry also runs tflm's own preset (RoPE, SwiGLU, RMSNorm) alone.
CONFIGS = {
    "shakespeare-char": dict(vocab_size=65, num_layers=4, num_heads=4, hidden_dim=192,
                             intermediate_dim=512, seq_len=256, batch=32),
    # nanoGPT's config/train_shakespeare_char.py: 6 x 6 x 384, context 256
    "nanogpt-shakespeare": dict(vocab_size=65, num_layers=6, num_heads=6, hidden_dim=384,
                                intermediate_dim=1536, seq_len=256, batch=16),
    # GPT-2 small; the vocabulary padded to a multiple of 64 as nanoGPT does (50257 -> 50304)
    "gpt2-124m": dict(vocab_size=50304, num_layers=12, num_heads=12, hidden_dim=768,
                      intermediate_dim=3072, seq_len=1024, batch=16),
}


def mfu(shape, parameters, tokens_per_second):
    head_size = shape["hidden_dim"] // shape["num_heads"]
    flops_per_token = 6 * parameters + 12 * shape["num_layers"] * shape["num_heads"] * (
        head_size * shape["seq_len"])
    return flops_per_token * tokens_per_second / PEAK_FLOPS


# ---------------------------------------------------------------------------------------
# Keras models (tflm and keras-hub), trained with model.fit


def keras_model(implementation, shape, remat):
    import keras

    common = dict(num_layers=shape["num_layers"], num_heads=shape["num_heads"],
                  hidden_dim=shape["hidden_dim"], intermediate_dim=shape["intermediate_dim"])
    if implementation == "tflm-preset":
        import tflm

        return tflm.GPT.from_preset(
            "shakespeare-char", tokenizer=None, max_sequence_length=shape["seq_len"],
            remat=remat)
    if implementation == "tflm":
        import tflm

        return tflm.GPT(shape["vocab_size"], max_sequence_length=shape["seq_len"],
                        position="learned", activation="gelu_tanh", norm="layernorm",
                        use_bias=True, tie_embeddings=True, remat=remat, **common)
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=shape["vocab_size"], max_sequence_length=shape["seq_len"],
        dropout=0.0, **common)
    token_ids = keras.Input((None,), dtype="int32")
    hidden = backbone({"token_ids": token_ids, "padding_mask": keras.ops.ones_like(token_ids)})
    logits = backbone.token_embedding(hidden, reverse=True)
    return keras.Model(token_ids, keras.layers.Activation("linear", dtype="float32")(logits))


def peak_memory_bytes():
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run_keras(implementation, shape, args):
    import keras
    import numpy as np

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = keras_model(implementation, shape, args.remat)
    # no metrics: the PyTorch reference computes none (tflm's "auto" adds two passes over
    # the logits)
    options = dict(
        optimizer=keras.optimizers.AdamW(6e-4, weight_decay=0.1, beta_2=0.95,
                                         global_clipnorm=1.0),
        metrics=[],
        jit_compile=True,
    )
    if args.loss_chunk_size:  # the cross-entropy from hidden states, chunk by chunk
        model.compile(loss="auto", loss_chunk_size=args.loss_chunk_size, **options)
    else:
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **options)
    batch, seq_len = shape["batch"], shape["seq_len"]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, shape["vocab_size"], (args.steps * batch, seq_len + 1), "int32")
    x, y = tokens[:, :-1], tokens[:, 1:]

    class OneStepAtATime(keras.callbacks.Callback):
        """A batch-end hook, as the progress bar has. Without one, Keras dispatches steps
        asynchronously; on the TensorFlow backend overlapping CPU steps then contend for
        the cores (up to twice the time a step on 2 cores). JAX keeps its asynchronous
        dispatch (a hook would wait for the device after every step)."""

        def on_train_batch_end(self, batch, logs=None):
            pass

    hooks = [OneStepAtATime()] if keras.backend.backend() == "tensorflow" else []

    def fit(steps):
        began = time.perf_counter()
        # the epoch's end turns the loss into a Python float: the device has finished
        model.fit(x[: steps * batch], y[: steps * batch], batch_size=batch, epochs=1,
                  shuffle=False, verbose=0, callbacks=hooks)
        return time.perf_counter() - began

    compile_seconds = fit(args.warmup)
    seconds = fit(args.steps)
    parameters = model.count_params()
    if implementation.startswith("tflm"):
        positions = model.embedding.position_encoding
        parameters -= sum(int(np.prod(w.shape)) for w in getattr(positions, "weights", []))
    else:
        parameters -= shape["seq_len"] * shape["hidden_dim"]
    if args.profile:
        profile_keras(model, x, y, batch, args.profile)
    return dict(step_seconds=seconds / args.steps, parameters=parameters,
                compile_seconds=compile_seconds, peak_memory=peak_memory_bytes())


def profile_keras(model, x, y, batch, directory):
    """Trace a few steps with the JAX profiler and print where the device time goes."""
    import jax

    steps = 4
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        model.fit(x[: steps * batch], y[: steps * batch], batch_size=batch, epochs=1,
                  shuffle=False, verbose=0)
    summarize_trace(directory, steps)


def summarize_trace(directory, steps, top=25):
    """Device time by thread of the trace, then the costliest XLA operations a step."""
    import collections
    import glob
    import gzip

    paths = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        print("  (no perfetto trace written)")
        return
    with gzip.open(sorted(paths)[-1], "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    metadata = [e for e in events if e.get("ph") == "M"]
    processes = {e["pid"]: e["args"].get("name", "") for e in metadata
                 if e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"].get("name", "") for e in metadata
               if e.get("name") == "thread_name"}
    devices = {pid for pid, name in processes.items() if "GPU" in name or "TPU" in name}
    by_thread = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in devices and "dur" in e:
            by_thread[threads.get((e["pid"], e.get("tid")), "?")][e["name"]] += e["dur"]
    if not by_thread:
        print(f"  (no device events; processes {sorted(processes.values())})")
        return
    for thread, totals in by_thread.items():
        print(f"  {thread}: {sum(totals.values()) / steps / 1e3:.2f} ms a step")
    names = [t for t in by_thread if "XLA Ops" in t] or [
        max(by_thread, key=lambda t: sum(by_thread[t].values()))]
    totals = by_thread[names[0]]
    busy = sum(totals.values())
    print(f"  costliest in {names[0]!r}:")
    for name, total in totals.most_common(top):
        print(f"    {total / steps / 1e3:8.3f} ms {100 * total / busy:5.1f}%  {name[:120]}")


# ---------------------------------------------------------------------------------------
# PyTorch reference: nanoGPT's GPT (pre-norm blocks, fused QKV, GELU (tanh), tied head,
# flash attention through scaled_dot_product_attention)


def torch_model(shape):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self, width, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(x).split(C, dim=2)
            q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                       for t in (q, k, v))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class Block(nn.Module):
        def __init__(self, width, heads, mlp_width):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width)
            self.attn = Attention(width, heads)
            self.ln_2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, mlp_width), nn.GELU(approximate="tanh"),
                                     nn.Linear(mlp_width, width))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            width = shape["hidden_dim"]
            self.wte = nn.Embedding(shape["vocab_size"], width)
            self.wpe = nn.Embedding(shape["seq_len"], width)
            self.blocks = nn.ModuleList(
                Block(width, shape["num_heads"], shape["intermediate_dim"])
                for _ in range(shape["num_layers"]))
            self.ln_f = nn.LayerNorm(width)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.blocks:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head
            # the loss inside the compiled forward, as nanoGPT does, so that it is fused
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    return GPT()


def run_torch(shape, args):
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = torch_model(shape).to(device)
    parameters = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4, betas=(0.9, 0.95), fused=cuda)
    compiled = torch.compile(model) if cuda else model  # inductor on CPU needs a compiler
    batch, seq_len = shape["batch"], shape["seq_len"]
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, shape["vocab_size"], (batch, seq_len + 1), generator=generator)
               .to(device) for _ in range(8)]
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.mixed_precision)

    def step(tokens):
        with autocast:
            loss = compiled(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def run(steps):
        began = time.perf_counter()
        for i in range(steps):
            loss = step(batches[i % len(batches)])
        float(loss)  # waits for the device
        return time.perf_counter() - began

    compile_seconds = run(args.warmup)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = run(args.steps)
    return dict(step_seconds=seconds / args.steps, parameters=parameters,
                compile_seconds=compile_seconds,
                peak_memory=torch.cuda.max_memory_allocated() if cuda else None)


# ---------------------------------------------------------------------------------------


def worker(args):
    shape = dict(CONFIGS[args.config])
    shape.update({k: v for k, v in (("batch", args.batch), ("seq_len", args.seq_len)) if v})
    if args.worker == "torch":
        result = run_torch(shape, args)
    else:
        result = run_keras(args.worker, shape, args)
    print("RESULT " + json.dumps(result), flush=True)


def launch(implementation, args, extra=()):
    command = [sys.executable, __file__, "--worker", implementation, "--config", args.config,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for flag in ("batch", "seq_len"):
        if getattr(args, flag):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.mixed_precision:
        command.append("--mixed-precision")
    command += list(extra)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as expired:
        print(f"  {implementation}: no result within {args.timeout} s\n"
              + (expired.stderr or b"")[-2000:].decode(errors="replace"), flush=True)
        return None
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        print("  " + line)
    print(f"  {implementation} failed:\n" + done.stderr[-3000:], flush=True)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="shakespeare-char")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--mixed-precision", action="store_true", help="bf16 compute")
    parser.add_argument("--compare", action="store_true", help="also keras-hub and PyTorch")
    parser.add_argument("--remat-memory", action="store_true",
                        help="tflm with and without rematerialization: memory and speed")
    parser.add_argument("--loss-chunk-size", type=int, metavar="N",
                        help="also tflm with the chunked cross-entropy, N tokens a chunk")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per implementation")
    parser.add_argument("--profile", metavar="DIR", help="trace tflm's steps (JAX) into DIR")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--remat", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import keras

    shape = dict(CONFIGS[args.config])
    shape.update({k: v for k, v in (("batch", args.batch), ("seq_len", args.seq_len)) if v})
    runs = [("tflm", "tflm", ["--profile", args.profile] if args.profile else [])]
    if args.remat_memory:
        runs.append(("tflm, remat", "tflm", ["--remat"]))
    if args.loss_chunk_size:
        runs.append((f"tflm, chunked loss ({args.loss_chunk_size} tokens)", "tflm",
                     ["--loss-chunk-size", str(args.loss_chunk_size)]))
    if args.compare:
        runs.append(("keras-hub GPT2Backbone", "keras-hub", []))
        try:
            import torch

            runs.append((f"PyTorch{' (torch.compile)' if torch.cuda.is_available() else ''}",
                         "torch", []))
        except ImportError:
            print("torch is not installed: no PyTorch reference")
    if args.config == "shakespeare-char":
        runs.append(("tflm shakespeare-char preset (RoPE, SwiGLU, RMSNorm)", "tflm-preset", []))

    print(f"{args.config}: {shape['num_layers']} layers x {shape['num_heads']} heads x "
          f"{shape['hidden_dim']}, MLP {shape['intermediate_dim']}, vocabulary "
          f"{shape['vocab_size']}, batch {shape['batch']} x {shape['seq_len']} tokens, "
          f"{'bf16 mixed precision' if args.mixed_precision else 'float32'}, Keras backend "
          f"{keras.backend.backend()}, {args.steps} timed steps after {args.warmup}", flush=True)
    results = []
    for label, implementation, extra in runs:
        result = launch(implementation, args, extra)
        if result:
            results.append((label, result))
            print(f"  done: {label}", flush=True)
    if not results:
        sys.exit("no implementation ran")

    tokens = shape["batch"] * shape["seq_len"]
    base = results[0][1]["step_seconds"]
    print(f"\n| implementation | ms/step | tokens/s | MFU | peak memory | compile s | "
          f"tflm speed vs this |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results:
        rate = tokens / r["step_seconds"]
        memory = f"{r['peak_memory'] / 2**30:.2f} GiB" if r["peak_memory"] else "-"
        print(f"| {label} | {r['step_seconds'] * 1e3:.1f} | {rate:,.0f} | "
              f"{mfu(shape, r['parameters'], rate):.3f} | {memory} | "
              f"{r['compile_seconds']:.0f} | {r['step_seconds'] / base:.2f}x |")


if __name__ == "__main__":
    main()
