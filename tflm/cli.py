"""The `tflm` command. Nothing imports this module; it imports what each subcommand needs.

    tflm train [--config FILE] [--set section.key=value ...]
    tflm eval --model runs/shakespeare-char/model.keras FILE
    tflm generate --model model.keras "ROMEO:" --max-new-tokens 200 --top-p 0.9 --seed 1
    tflm export --model runs/shakespeare-char/model.keras --name shakespeare [--version 2]
    tflm serve --model_base_path saved_models/shakespeare [--rest_api_port 8501] [--port 8500]
    tflm convert hf://openai-community/gpt2 gpt2.keras
    tflm finetune --pretrained hf://sentence-transformers/all-MiniLM-L6-v2 --train train.tsv

Every flag that takes a model (--model, --pretrained, --init-from, convert's source) takes
a handle (`tflm.hub`): a .keras file, a directory written by save_to_preset, a Hugging Face
model directory, or hf://owner/name[@revision].

Each command is a pair: `add_<name>_command(commands)` declares its arguments, and the
function it runs sits right below it. A command raises the library's errors as they are;
`main` turns them into one line, "tflm: <message>", and exit status 1.
"""

import argparse
import sys
import time

START = time.time()  # `train.max_minutes` counts from the command's start

# What a user can cause: a missing or unreadable file, a bad value, a bad config key, a
# missing optional package, a run that cannot go on (e.g. a loss that became NaN).
USER_ERRORS = (OSError, ValueError, TypeError, KeyError, ImportError, RuntimeError,
               FloatingPointError)


MODEL_HANDLE = ("a .keras file, a directory written by save_to_preset, a Hugging Face model "
                "directory or hf://owner/name[@revision]")


def _load_model(handle):
    from tflm import hub

    try:
        return hub.load(handle, pretrained=True)  # uncompiled: each command compiles what it needs
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a model from {handle!r}: {error}") from None


def _load_model_with_tokenizer(path, needs):
    model = _load_model(path)
    if model.tokenizer is None:
        raise ValueError(f"this model has no tokenizer, so it cannot {needs}.")
    return model


def add_train_command(commands):
    parser = commands.add_parser(
        "train", help="train a GPT from a config (default: tiny Shakespeare in 10 minutes)",
        description="Train a GPT as a YAML config says; resumes when the output directory "
                    "holds a checkpoint.")
    parser.add_argument("--config", help="a YAML file or the name of one in configs/ "
                                         "(default: shakespeare-char)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. optimizer.learning_rate=1e-3")
    parser.add_argument("--init-from", metavar="MODEL",
                        help=f"continue training a GPT: {MODEL_HANDLE}; its architecture, "
                             "weights and tokenizer replace the config's (same as --set "
                             "model.init_from=MODEL)")
    parser.set_defaults(run=train)


def train(args):
    from tflm.training import load_config, train

    overrides = list(args.set) + ([f"model.init_from={args.init_from}"] if args.init_from else [])
    train(load_config(args.config, overrides), start=START)


def add_eval_command(commands):
    parser = commands.add_parser("eval", help="loss and perplexity of a saved GPT on a text file")
    parser.add_argument("file", help="a text file (or a glob of files)")
    parser.add_argument("--model", required=True, help=f"the GPT: {MODEL_HANDLE}")
    parser.add_argument("--seq-len", type=int, help="tokens per block (default: the model's context)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--verbose", type=int, default=0)
    parser.set_defaults(run=evaluate)


def evaluate(args):
    import math

    from tflm.data import lm_dataset

    model = _load_model_with_tokenizer(args.model, "read a text file")
    seq_len = args.seq_len or model.max_sequence_length
    data = lm_dataset(args.file, model.tokenizer, seq_len, args.batch_size, shuffle=False,
                      model=model)
    model.compile(loss="auto", metrics="auto", optimizer="auto")
    results = model.evaluate(data, verbose=args.verbose, return_dict=True)
    batches = sum(1 for _ in data)
    print(f"{args.file}: loss {results['loss']:.4f} nats per token, perplexity "
          f"{math.exp(results['loss']):.3f}, token accuracy {results['token_accuracy']:.4f} "
          f"({batches * args.batch_size * seq_len:,} tokens in blocks of {seq_len})")


def add_export_command(commands):
    parser = commands.add_parser(
        "export", help="export a saved model as a SavedModel for TF Serving, or check an export",
        description="Write saved_models/NAME/VERSION, a SavedModel that stock TF Serving and plain "
                    "TensorFlow load (no tflm, no tensorflow-text); or, with --check DIR alone, "
                    "check an existing export.")
    parser.add_argument("--model", help=f"the model: {MODEL_HANDLE}")
    parser.add_argument("--name", help="the model's name: saved_models/NAME/VERSION")
    parser.add_argument("--version", type=int, help="default: the next one")
    parser.add_argument("--base-path", default="saved_models", help="default: %(default)s")
    parser.add_argument("--max-new-tokens", type=int,
                        help="length of a GPT's serving_default completions (default 64)")
    parser.add_argument("--warmup-batch-size", type=int, default=8,
                        help="TF Serving warm-up requests compile a GPT's decoding for batches "
                             "1, 2, 4, ... up to this (0: none; default %(default)s)")
    parser.add_argument("--check", nargs="?", const=True, metavar="DIR",
                        help="check that an export uses only core TensorFlow ops, loads and answers "
                             "its warm-up requests in a process without tflm and tensorflow-text: "
                             "the new export, or the version folder DIR")
    parser.set_defaults(run=export)


def export(args):
    import re

    if isinstance(args.check, str) and args.model is None:
        return _check_export(args.check)
    if args.model is None or args.name is None:
        raise ValueError("export needs --model and --name (or --check DIR to check an export).")
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", args.name):
        raise ValueError(f"a model name is letters, digits, '_', '-' and '.'; got {args.name!r}.")
    from tflm.export import saved_model

    model = _load_model(args.model)
    path = saved_model(model, f"{args.base_path}/{args.name}", args.version, args.max_new_tokens,
                       warmup_batch_size=args.warmup_batch_size)
    print(f"Exported {path}")
    if args.check:
        _check_export(path)


def _check_export(path):
    from tflm.export import audit

    report = audit.check(path)
    problems = audit.problems(report)
    if problems:
        raise RuntimeError(f"{path} fails the check: " + "; ".join(problems))
    print(f"{path}: {len(report['ops'])} op types, all in core TensorFlow; loads and answers "
          f"{report['warmup_requests']} warm-up requests without tflm or tensorflow-text "
          f"(signatures: {', '.join(report['signatures'])}).")


def add_serve_command(commands):
    parser = commands.add_parser(
        "serve", help="serve SavedModels with TF Serving's REST and gRPC APIs",
        description="Serve the versions of one exported model with TF Serving's REST API "
                    "(--rest_api_port) and gRPC API (--port); the flags are TF Serving's.")
    flag = parser.add_argument
    flag("--model_base_path", "--model-base-path", required=True,
         help="the folder of the model's versions (saved_models/NAME)")
    flag("--model_name", "--model-name",
         help="the name in URLs and requests (default: the folder's)")
    flag("--port", type=int, default=None,
         help="the gRPC port (default 8500; 0: no gRPC), as in TF Serving; the REST port is "
              "--rest_api_port")
    flag("--rest_api_port", "--rest-api-port", type=int, default=None,
         help="the REST port (default 8501; 0: no REST API)")
    flag("--host", default="0.0.0.0",
         help="the address to listen on (default 0.0.0.0, as TF Serving: every interface); "
              "use 127.0.0.1 behind a proxy on the same machine")
    flag("--rest_api_timeout_in_ms", "--rest-api-timeout-in-ms", type=int, default=30000,
         help="a REST prediction that takes longer is answered 504 (default 30000)")
    flag("--file_system_poll_wait_seconds", "--file-system-poll-wait-seconds", type=float,
         default=1.0, help="seconds between scans of the base path for new versions (default 1; "
                           "0: scan once)")
    flag("--model_version_policy", "--model-version-policy", type=_version_policy, default="latest",
         help="latest (the newest version, default), all, or specific:1,3 (those versions)")
    flag("--enable_batching", "--enable-batching", type=_boolean, nargs="?", const=True,
         default=False, help="merge concurrent requests into batches, as TF Serving does")
    flag("--batching_parameters_file", "--batching-parameters-file",
         help="TF Serving's batching parameters (max_batch_size { value: 32 } ...), "
              "used with --enable_batching")
    flag("--rest_api_num_threads", "--rest-api-num-threads", type=int, default=None,
         help="threads that run REST predictions (default 4 per CPU, as TF Serving)")
    flag("--max_batch_size", "--max-batch-size", type=int, default=64,
         help="the most rows in one request (default 64)")
    flag("--max_body_bytes", "--max-body-bytes", type=int, default=1 << 20,
         help="the largest REST body or gRPC message (default 1 MiB)")
    flag("--monitoring", type=_boolean, nargs="?", const=True, default=False,
         help="serve Prometheus metrics at /monitoring/prometheus/metrics")
    parser.set_defaults(run=serve)


def _boolean(text):
    """TF Serving writes boolean flags --flag=true; --flag alone is true too."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def _version_policy(text):
    if text in ("latest", "all"):
        return text
    kind, _, numbers = text.partition(":")
    try:
        versions = tuple(int(n) for n in numbers.split(","))
    except ValueError:
        versions = ()
    if kind != "specific" or not versions or min(versions) < 0:
        raise argparse.ArgumentTypeError(f"expected latest, all or specific:1,3; got {text!r}")
    return versions


def serve(args):
    import logging
    from pathlib import Path

    from tflm.export import Server
    from tflm.export.batching import BatchingParameters

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.port is not None and args.rest_api_port is None:
        print(f"tflm serve: --port {args.port} is the gRPC port, as in TF Serving; the REST API "
              "listens on --rest_api_port (8501).", file=sys.stderr)
    grpc_port = 8500 if args.port is None else args.port
    rest_port = 8501 if args.rest_api_port is None else args.rest_api_port
    if grpc_port == 0 and rest_port == 0:
        raise ValueError("--port 0 and --rest_api_port 0 leave nothing to serve.")
    batching = None
    if args.enable_batching:
        batching = (BatchingParameters.from_file(args.batching_parameters_file)
                    if args.batching_parameters_file else BatchingParameters())
    name = args.model_name or Path(args.model_base_path).resolve().name
    server = Server(args.model_base_path, name, host=args.host,
                    rest_api_port=rest_port or None, port=grpc_port or None,
                    max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
                    rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
                    file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
                    model_version_policy=args.model_version_policy, batching=batching,
                    monitoring=args.monitoring, rest_api_num_threads=args.rest_api_num_threads)
    server.start()
    apis = []
    if server.rest_api_port is not None:
        apis.append(f"REST at http://{args.host}:{server.rest_api_port}/v1/models/{name}")
    if server.port is not None:
        apis.append(f"gRPC at {args.host}:{server.port}")
    print(f"Serving {name!r} (versions {server.versions.available()}) from {args.model_base_path}: "
          f"{', '.join(apis)}", flush=True)
    server.serve_forever()  # until SIGTERM or SIGINT, then a graceful shutdown


def add_convert_command(commands):
    parser = commands.add_parser(
        "convert", help="convert a model: a Hugging Face checkpoint to tflm, or tflm to Hugging Face",
        description="Write the model a handle names as a .keras file or a tflm preset directory, "
                    "or with --to-huggingface as a Hugging Face model directory.")
    parser.add_argument("source", help=MODEL_HANDLE)
    parser.add_argument("output", nargs="?",
                        help="a .keras file, or a directory to write as a tflm preset")
    parser.add_argument("--output", dest="output_flag", metavar="OUTPUT", help="as OUTPUT")
    parser.add_argument("--to-huggingface", metavar="DIR",
                        help="write a GPT (GPT-2 or Llama layout) or an Encoder (BERT layout) with its "
                             "tokenizer as a Hugging Face model directory that transformers loads")
    parser.set_defaults(run=convert)


def convert(args):
    from tflm import hub

    outputs = [o for o in (args.output, args.output_flag, args.to_huggingface) if o is not None]
    if len(outputs) != 1:
        raise ValueError("convert needs one output: a .keras file, a preset directory, "
                         "or --to-huggingface DIR.")
    [output] = outputs
    model = hub.load(args.source, pretrained=True)
    if args.to_huggingface:
        from tflm.convert import to_huggingface

        to_huggingface(model, output)
    elif output.endswith(".keras"):
        model.save(output)
    else:
        model.save_to_preset(output)
    print(f"Saved {type(model).__name__} ({model.count_params():,} parameters) to {output}")


def add_finetune_command(commands):
    parser = commands.add_parser(
        "finetune", help="fine-tune a pretrained encoder as a text classifier")
    parser.add_argument("--pretrained", required=True, help=f"the encoder: {MODEL_HANDLE}")
    parser.add_argument("--train", required=True, help="labelled CSV, TSV or JSONL")
    parser.add_argument("--valid", help="labelled validation file (default: 10%% of --train held out)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--output", default="classifier.keras")
    parser.add_argument("--seq-len", type=int, default=128, help="longest text in tokens")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.06, help="fraction of the steps")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--layer-decay", type=float, help="layer-wise learning-rate decay, e.g. 0.9")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between validations")
    parser.add_argument("--patience", type=int, default=3, help="validations without improvement")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=finetune)


def finetune(args):
    from tflm.training.finetune import finetune

    finetune(args.pretrained, args.train, args.valid, args.output, args.text_column,
             args.label_column, seq_len=args.seq_len, batch_size=args.batch_size,
             learning_rate=args.learning_rate, warmup=args.warmup, epochs=args.epochs,
             layer_decay=args.layer_decay, eval_every=args.eval_every, patience=args.patience,
             seed=args.seed)
    print(f"Saved {args.output}")


def add_generate_command(commands):
    parser = commands.add_parser("generate", help="continue a prompt with a saved GPT")
    parser.add_argument("prompt")
    parser.add_argument("--model", required=True, help=f"the GPT: {MODEL_HANDLE}")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, help="sample at this temperature")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="nucleus sampling with this probability mass")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="the same seed gives the same text")
    parser.add_argument("--truncate", action="store_true", help="cut prompts that fill the context")
    parser.add_argument("--stream", action="store_true", help="print tokens as they come")
    parser.set_defaults(run=generate)


def generate(args):
    model = _load_model_with_tokenizer(args.model, "take a text prompt")
    options = dict(sampler=sampler_from_flags(args), seed=args.seed, truncate=args.truncate)
    if args.stream and args.num_beams == 1:
        print(args.prompt, end="", flush=True)
        for piece in model.stream(args.prompt, args.max_new_tokens, **options):
            print(piece, end="", flush=True)
        print()
    else:
        print(args.prompt + model.generate(args.prompt, args.max_new_tokens, **options))


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


COMMANDS = (add_train_command, add_eval_command, add_export_command, add_serve_command,
            add_convert_command, add_finetune_command, add_generate_command)


def build_parser():
    parser = argparse.ArgumentParser(prog="tflm", description="Language models with Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as error:
        # One line, no traceback: the message names the problem (file, value or key).
        raise SystemExit(f"tflm: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
