"""int8 decoding against float32 on CPU: speed on GPT-2-small shapes, quality on a trained model.

Speed: a GPT of GPT-2-small shape (random weights, seed 0) generates 256 new tokens from
16-token prompts, greedy, at batch 1 and 8, in float32 and after `model.quantize("int8")`
(int8 weights with a scale per output channel, activations quantized per row on the fly,
int8 x int8 products), on the TensorFlow and the JAX backend, each in a fresh process;
tokens/s, the best of 3 warm calls.

Quality: the GPT that `tflm train` writes with its default config (runs/shakespeare-char/
model.keras) in float32 and in int8: the validation loss on the default config's
validation split (the last 10% of tiny Shakespeare), the share of its positions where
both give the same most likely next token, and greedy continuations (256 tokens, or what
the context leaves) of 16 prompts from that split: the share of positions where int8 chose
the float32 token, and the mean number of tokens before the first difference (after one,
the two texts go their own ways, so the share counts mostly chance matches).

    tflm train                                  # writes runs/shakespeare-char/model.keras
    python benchmarks/quantized_decoding.py --model runs/shakespeare-char/model.keras
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEED = textwrap.dedent("""
    import json, sys, time
    import keras, numpy as np
    import tflm

    new_tokens = int(sys.argv[1])
    keras.utils.set_random_seed(0)
    model = tflm.GPT.from_preset("gpt2-124m")
    prompts = {b: np.random.default_rng(b).integers(0, 50257, (b, 16)).tolist() for b in (1, 8)}

    def tokens_per_second(rows):
        model.generate(rows, new_tokens, stop_tokens=[])  # compiles
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            model.generate(rows, new_tokens, stop_tokens=[])
            best = min(best, time.perf_counter() - start)
        return len(rows) * new_tokens / best

    result = {"float32": {b: tokens_per_second(rows) for b, rows in prompts.items()}}
    model.quantize("int8")
    result["int8"] = {b: tokens_per_second(rows) for b, rows in prompts.items()}
    print(json.dumps(result))
""")

QUALITY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tflm
    from tflm.data import lm_dataset
    from tflm.training import load_config
    from tflm.data.corpora import tiny_shakespeare

    path, new_tokens = sys.argv[1], int(sys.argv[2])
    model = tflm.models.load(path)
    new_tokens = min(new_tokens, model.max_sequence_length - 16)  # what the context holds
    data = load_config(None)["data"]
    _, validation = lm_dataset(str(tiny_shakespeare()), model.tokenizer, data["seq_len"],
                               data["batch_size"], validation_split=data["validation_split"],
                               subset="both", seed=data["seed"], model=model, progress=False)
    blocks = np.concatenate([x for x, _ in validation.as_numpy_iterator()])
    prompts = blocks[:: len(blocks) // 16][:16, :16].tolist()

    def measure():
        model.compile(loss="auto", metrics="auto", optimizer="auto")
        loss = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
        choices = np.argmax(model.predict(validation, verbose=0), -1)  # teacher-forced
        return loss, choices, model.generate(prompts, new_tokens, stop_tokens=[])

    float_loss, float_choices, float_ids = measure()
    model.quantize("int8")
    int8_loss, int8_choices, int8_ids = measure()
    same = [np.asarray(a[16:]) == np.asarray(b[16:]) for a, b in zip(float_ids, int8_ids)]
    print(json.dumps({
        "float32_loss": float_loss, "int8_loss": int8_loss,
        "next_token_agreement": float(np.mean(float_choices == int8_choices)),
        "agreement": float(np.mean(same)),
        "until_first_difference": float(np.mean([np.argmin(s) if not s.all() else len(s)
                                                 for s in same])),
        "prompts": len(prompts), "tokens": len(blocks) * data["seq_len"],
        "new_tokens": new_tokens,
    }))
""")


def run(code, *args, backend="tensorflow"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                            text=True, env=env)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a trained shakespeare-char GPT (.keras) for the quality "
                                        "figures; without it, speed only")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--quality-only", action="store_true")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    print(f"GPT-2-small shapes, greedy, 16 + {args.new_tokens} tokens; tokens/s, best of 3")
    print("| backend | batch | float32 | int8 | int8 / float32 |")
    print("|---|---:|---:|---:|---:|")
    for backend in [] if args.quality_only else ("tensorflow", "jax"):
        speed = run(SPEED, args.new_tokens, backend=backend)
        for batch in ("1", "8"):
            f32, int8 = speed["float32"][batch], speed["int8"][batch]
            print(f"| {backend} | {batch} | {f32:.1f} | {int8:.1f} | {int8 / f32:.2f}× |")
    if args.model:
        q = run(QUALITY, args.model, args.new_tokens)
        change = (q["int8_loss"] - q["float32_loss"]) / q["float32_loss"]
        print(f"\n{args.model}: validation loss over {q['tokens']:,} tokens: float32 "
              f"{q['float32_loss']:.4f}, int8 {q['int8_loss']:.4f} ({change:+.2%}); "
              "the most likely "
              f"next token is the same at {q['next_token_agreement']:.2%} of them; greedy "
              f"{q['new_tokens']}-token continuations of {q['prompts']} prompts: int8 chose "
              f"float32's token at {q['agreement']:.1%} of positions, "
              f"{q['until_first_difference']:.1f} tokens before the first difference on average")


if __name__ == "__main__":
    main()
