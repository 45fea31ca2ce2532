"""The `tflm` command. Nothing imports this module; it imports what each subcommand needs.

    tflm train [--config FILE] [--set section.key=value ...]
    tflm eval --model runs/shakespeare-char/model.keras FILE
    tflm generate --model model.keras "ROMEO:" --max-new-tokens 200 --top-p 0.9 --seed 1
    tflm export --model runs/shakespeare-char/model.keras --name shakespeare [--version 2]
    tflm serve --model_base_path saved_models/shakespeare [--port 8501]
    tflm convert path/to/hf-model --output model.keras
    tflm finetune --pretrained path/to/hf-model --train train.tsv [--valid valid.tsv]
"""

import argparse
import sys
import time

START = time.time()  # `train.max_minutes` counts from the command's start


def _load_model(path):
    import keras

    import tflm.tokenizers  # noqa: F401  (registers the tokenizer classes for loading)

    try:
        return keras.saving.load_model(path, compile=False)  # each command compiles what it needs
    except (OSError, ValueError) as error:
        raise SystemExit(f"tflm: cannot load a model from {path!r}: {error}") from None


def sampler_from_flags(args):
    """The sampler the generation flags describe (greedy when none is given)."""
    from tflm import generation

    options = {"repetition_penalty": args.repetition_penalty}
    if args.num_beams > 1:
        return generation.Beam(args.num_beams, args.length_penalty, **options)
    temperature = 1.0 if args.temperature is None else args.temperature
    if args.top_p is not None:
        return generation.TopP(args.top_p, temperature, **options)
    if args.top_k is not None:
        return generation.TopK(args.top_k, temperature, **options)
    if args.temperature is not None:
        return generation.Random(temperature, **options)
    return generation.Greedy(**options)


def generate(args):
    model = _load_model(args.model)
    if model.tokenizer is None:
        raise SystemExit("tflm: this model has no tokenizer, so it cannot take a text prompt.")
    sampler = sampler_from_flags(args)
    options = dict(sampler=sampler, seed=args.seed, truncate=args.truncate)
    try:
        if args.stream and args.num_beams == 1:
            print(args.prompt, end="", flush=True)
            for piece in model.stream(args.prompt, args.max_new_tokens, **options):
                print(piece, end="", flush=True)
            print()
        else:
            print(args.prompt + model.generate(args.prompt, args.max_new_tokens, **options))
    except ValueError as error:
        raise SystemExit(f"tflm: {error}") from None


def train(args):
    from tflm.training import load_config, train

    overrides = list(args.set) + ([f"model.init_from={args.init_from}"] if args.init_from else [])
    try:
        config = load_config(args.config, overrides)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"tflm: {error}") from None
    try:
        train(config, start=START)
    except (RuntimeError, FloatingPointError, ValueError, OSError) as error:
        raise SystemExit(f"tflm: {error}") from None


def evaluate(args):
    import math

    from tflm.data import lm_dataset

    model = _load_model(args.model)
    if model.tokenizer is None:
        raise SystemExit("tflm: this model has no tokenizer, so it cannot read a text file.")
    seq_len = args.seq_len or model.max_sequence_length
    try:
        data = lm_dataset(args.file, model.tokenizer, seq_len, args.batch_size, shuffle=False,
                          model=model)
    except (OSError, ValueError) as error:
        raise SystemExit(f"tflm: {error}") from None
    model.compile(loss="auto", metrics="auto", optimizer="auto")
    results = model.evaluate(data, verbose=args.verbose, return_dict=True)
    batches = sum(1 for _ in data)
    print(f"{args.file}: loss {results['loss']:.4f} nats per token, perplexity "
          f"{math.exp(results['loss']):.3f}, token accuracy {results['token_accuracy']:.4f} "
          f"({batches * args.batch_size * seq_len:,} tokens in blocks of {seq_len})")


def export(args):
    from tflm.export import saved_model

    import re

    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", args.name):
        raise SystemExit(f"tflm: a model name is letters, digits, '_', '-' and '.'; got {args.name!r}.")
    model = _load_model(args.model)
    try:
        path = saved_model(model, f"{args.base_path}/{args.name}", args.version, args.max_new_tokens)
    except (ValueError, TypeError, FileExistsError) as error:
        raise SystemExit(f"tflm: {error}") from None
    print(f"Exported {path}")


def serve(args):
    from pathlib import Path

    from tflm.export import Server

    name = args.model_name or Path(args.model_base_path).resolve().name
    try:
        server = Server(args.model_base_path, name, args.port, args.host, args.max_body_bytes,
                        args.max_batch_size)
    except (OSError, ValueError) as error:
        raise SystemExit(f"tflm: {error}") from None
    print(f"Serving {name!r} (versions {server.models.versions()}) from {args.model_base_path} "
          f"at http://{args.host}:{server.port}/v1/models/{name}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


def convert(args):
    from tflm.convert import from_huggingface

    try:
        model = from_huggingface(args.directory)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise SystemExit(f"tflm: {error}") from None
    model.save(args.output)
    print(f"Saved {type(model).__name__} ({model.count_params():,} parameters) to {args.output}")


def finetune(args):
    from tflm.training.finetune import finetune

    try:
        finetune(args.pretrained, args.train, args.valid, args.output, args.text_column,
                 args.label_column, seq_len=args.seq_len, batch_size=args.batch_size,
                 learning_rate=args.learning_rate, warmup=args.warmup, epochs=args.epochs,
                 layer_decay=args.layer_decay, eval_every=args.eval_every, patience=args.patience,
                 seed=args.seed)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise SystemExit(f"tflm: {error}") from None
    print(f"Saved {args.output}")


def build_parser():
    parser = argparse.ArgumentParser(prog="tflm", description="Language models with Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)

    tr = commands.add_parser(
        "train", help="train a GPT from a config (default: tiny Shakespeare in 10 minutes)",
        description="Train a GPT as a YAML config says; resumes when the output directory "
                    "holds a checkpoint.")
    tr.add_argument("--config", help="a YAML file or the name of one in configs/ "
                                     "(default: shakespeare-char)")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value (repeatable), e.g. optimizer.lr=1e-3")
    tr.add_argument("--init-from", help="continue training a saved .keras GPT (an imported "
                                        "checkpoint too): same as --set model.init_from=PATH")
    tr.set_defaults(run=train)

    ev = commands.add_parser("eval", help="loss and perplexity of a saved GPT on a text file")
    ev.add_argument("file", help="a text file (or a glob of files)")
    ev.add_argument("--model", required=True, help="a .keras file saved by tflm")
    ev.add_argument("--seq-len", type=int, help="tokens per block (default: the model's context)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--verbose", type=int, default=0)
    ev.set_defaults(run=evaluate)

    ex = commands.add_parser("export", help="export a saved model as a SavedModel for TF Serving")
    ex.add_argument("--model", required=True, help="a .keras file saved by tflm")
    ex.add_argument("--name", required=True, help="the model's name: saved_models/NAME/VERSION")
    ex.add_argument("--version", type=int, help="default: the next one")
    ex.add_argument("--base-path", default="saved_models")
    ex.add_argument("--max-new-tokens", type=int,
                    help="length of a GPT's serving_default completions (default 64)")
    ex.set_defaults(run=export)

    sv = commands.add_parser("serve", help="serve SavedModels with TF Serving's REST API")
    sv.add_argument("--model_base_path", "--model-base-path", required=True,
                    help="the folder of the model's versions (saved_models/NAME)")
    sv.add_argument("--model_name", "--model-name", help="the name in URLs (default: the folder's)")
    sv.add_argument("--port", "--rest_api_port", type=int, default=8501)
    sv.add_argument("--host", default="0.0.0.0")
    sv.add_argument("--max_body_bytes", "--max-body-bytes", type=int, default=1 << 20)
    sv.add_argument("--max_batch_size", "--max-batch-size", type=int, default=64)
    sv.set_defaults(run=serve)

    cv = commands.add_parser("convert", help="import a Hugging Face checkpoint (BERT, MiniLM, GPT-2)")
    cv.add_argument("directory", help="config.json, model.safetensors and the tokenizer's files")
    cv.add_argument("--output", required=True, help="the .keras file to write")
    cv.set_defaults(run=convert)

    ft = commands.add_parser("finetune", help="fine-tune a pretrained encoder as a text classifier")
    ft.add_argument("--pretrained", required=True, help="a Hugging Face directory or a .keras Encoder")
    ft.add_argument("--train", required=True, help="labelled CSV, TSV or JSONL")
    ft.add_argument("--valid", help="labelled validation file (default: 10%% of --train held out)")
    ft.add_argument("--text-column", default="text")
    ft.add_argument("--label-column", default="label")
    ft.add_argument("--output", default="classifier.keras")
    ft.add_argument("--seq-len", type=int, default=128, help="longest text in tokens")
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--learning-rate", type=float, default=1e-4)
    ft.add_argument("--warmup", type=float, default=0.06, help="fraction of the steps")
    ft.add_argument("--epochs", type=int, default=1)
    ft.add_argument("--layer-decay", type=float, help="layer-wise learning-rate decay, e.g. 0.9")
    ft.add_argument("--eval-every", type=int, default=200, help="steps between validations")
    ft.add_argument("--patience", type=int, default=3, help="validations without improvement")
    ft.add_argument("--seed", type=int, default=0)
    ft.set_defaults(run=finetune)

    gen = commands.add_parser("generate", help="continue a prompt with a saved GPT")
    gen.add_argument("prompt")
    gen.add_argument("--model", required=True, help="a .keras file saved by tflm")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, help="sample at this temperature")
    gen.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    gen.add_argument("--top-p", type=float, help="nucleus sampling with this probability mass")
    gen.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    gen.add_argument("--length-penalty", type=float, default=1.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int, help="the same seed gives the same text")
    gen.add_argument("--truncate", action="store_true", help="cut prompts that fill the context")
    gen.add_argument("--stream", action="store_true", help="print tokens as they come")
    gen.set_defaults(run=generate)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
