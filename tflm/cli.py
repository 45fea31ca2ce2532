"""The `tflm` command. Nothing imports this module; it imports what each subcommand needs.

    tflm train [--config FILE] [--set section.key=value ...]
    tflm eval --model runs/shakespeare-char/model.keras FILE
    tflm generate --model model.keras "ROMEO:" --max-new-tokens 200 --top-p 0.9 --seed 1
    tflm export --model runs/shakespeare-char/model.keras --name shakespeare [--version 2]
    tflm serve --model-base-path saved_models/shakespeare [--rest-api-port 8501] [--port 8500]
    tflm convert hf://openai-community/gpt2 gpt2.keras
    tflm finetune --pretrained hf://sentence-transformers/all-MiniLM-L6-v2 --train train.tsv
    tflm classify --model classifier.keras "a fine film" "dull"

Every flag that takes a model (--model, --pretrained, --init-from, convert's source) takes
a handle (`tflm.hub`): a .keras file, a directory written by save_to_preset, a Hugging Face
model directory, or hf://owner/name[@revision].

Each command is a pair: `add_<name>_command(commands)` declares its arguments, and the
function it runs sits right below it. A command raises the library's errors as they are;
`main` turns them into one line, "tflm: <message>", and exit status 1.

Parsing imports neither Keras nor TensorFlow (`tflm/__init__.py` defers them while the
command starts), so --help, --version and usage errors answer at once; `main` imports
them, with TensorFlow's start-up log lines filtered, once the arguments are good.
"""

import argparse
import os
import re
import sys
import time

from tflm import __version__

START = time.time()  # `train.max_minutes` counts from the command's start

# What a user can cause: a missing or unreadable file, a bad value, a bad config key, a
# missing optional package, a run that cannot go on (e.g. a loss that became NaN).
USER_ERRORS = (OSError, ValueError, TypeError, KeyError, ImportError, RuntimeError,
               FloatingPointError)

MODEL_HANDLE = ("a .keras file, a directory written by save_to_preset, a Hugging Face model "
                "directory or hf://owner/name[@revision]")

# GPT.generate's default, shown in --help without importing the model (a test checks that
# they agree). The command passes max_new_tokens only when given, so the library's applies.
GENERATE_MAX_NEW_TOKENS = 64


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, where it has one worth showing; the
    usage and the option list show kebab-case spellings only (serve's underscore
    spellings, TF Serving's, are accepted as aliases)."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in action.help:
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        kebab = [o for o in action.option_strings if "_" not in o]
        if kebab and len(kebab) < len(action.option_strings):
            action = argparse.Action(kebab, action.dest, action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(action)


def _add_command(commands, name, help, description=None):
    return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               formatter_class=HelpFormatter)


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


def _quantized(model, mode):
    from tflm.models import GPT

    if mode is not None:
        if not isinstance(model, GPT):
            raise ValueError(f"--quantize applies to a GPT, not a {type(model).__name__}.")
        _say(f"Quantizing the weights to {mode}")
        model.quantize(mode)
    return model


def _say(message):
    """A progress line on stderr, so that stdout holds only the command's result."""
    print(message, file=sys.stderr, flush=True)


def add_train_command(commands):
    parser = _add_command(
        commands, "train", "train a GPT from a config (default: tiny Shakespeare in 10 minutes)",
        "Train a GPT as a YAML config says; resumes when the output directory holds a "
        "checkpoint.")
    parser.add_argument("--config", help="a YAML file, or the name of one in configs/; it names "
                                         "only what it changes from the default "
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
    parser = _add_command(commands, "eval", "loss and perplexity of a saved GPT on a text file")
    parser.add_argument("file", help="a text file (or a glob of files)")
    parser.add_argument("--model", required=True, help=f"the GPT: {MODEL_HANDLE}")
    parser.add_argument("--seq-len", type=int, help="tokens per block (default: the model's context)")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per batch")
    parser.add_argument("--verbose", type=int, choices=(0, 1),
                        help="1: a progress bar on stderr; 0: none (default: 1 when stderr is "
                             "a terminal)")
    parser.set_defaults(run=evaluate)


def evaluate(args):
    import contextlib
    import math

    from tflm.data import lm_dataset

    model = _load_model_with_tokenizer(args.model, "read a text file")
    seq_len = args.seq_len or model.max_sequence_length
    data = lm_dataset(args.file, model.tokenizer, seq_len, args.batch_size, shuffle=False,
                      model=model)
    model.compile(loss="auto", metrics="auto", optimizer="auto")
    verbose = sys.stderr.isatty() if args.verbose is None else args.verbose
    with contextlib.redirect_stdout(sys.stderr):  # Keras draws its progress bar on stdout
        results = model.evaluate(data, verbose=int(verbose), return_dict=True)
    batches = sum(1 for _ in data)
    print(f"{args.file}: loss {results['loss']:.4f} nats per token, perplexity "
          f"{math.exp(results['loss']):.3f}, token accuracy {results['token_accuracy']:.4f} "
          f"({batches * args.batch_size * seq_len:,} tokens in blocks of {seq_len})")


def add_export_command(commands):
    parser = _add_command(
        commands, "export", "export a saved model as a SavedModel for TF Serving, or check an export",
        "Write BASE_PATH/NAME/VERSION, a SavedModel that stock TF Serving and plain "
        "TensorFlow load (no tflm, no tensorflow-text); or, with --check DIR alone, "
        "check an existing export.")
    parser.add_argument("--model", help=f"the GPT or Classifier: {MODEL_HANDLE}")
    parser.add_argument("--name", help="the model's name: BASE_PATH/NAME/VERSION")
    parser.add_argument("--version", type=int, help="the version's number (default: the next one)")
    parser.add_argument("--base-path", default="saved_models", help="the folder of exported models")
    parser.add_argument("--max-new-tokens", type=int,
                        help="length of a GPT's serving_default completions (default: 64, or "
                             "less when the context is shorter)")
    parser.add_argument("--warmup-batch-size", type=int, default=8,
                        help="TF Serving warm-up requests compile a GPT's decoding for batches "
                             "1, 2, 4, ... up to this (0: none)")
    parser.add_argument("--quantize", choices=("int8",),
                        help="quantize a GPT's weights first (GPT.quantize): int8 weights and "
                             "activations, a quarter of the weights' size; faster at batch 8 "
                             "and above on CPUs with VNNI, not at batch 1")
    parser.add_argument("--check", nargs="?", const=True, metavar="DIR",
                        help="check that an export uses only core TensorFlow ops, loads and answers "
                             "its warm-up requests in a process without tflm and tensorflow-text: "
                             "the new export, or the version folder DIR")
    parser.set_defaults(run=export)


def export(args):
    if isinstance(args.check, str) and args.model is None:
        return _check_export(args.check)
    if args.model is None or args.name is None:
        raise ValueError("export needs --model and --name (or --check DIR to check an export).")
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", args.name):
        raise ValueError(f"a model name is letters, digits, '_', '-' and '.'; got {args.name!r}.")
    from tflm.export import saved_model

    _say(f"Loading {args.model}")
    model = _quantized(_load_model(args.model), args.quantize)
    started = time.time()
    _say(f"Exporting the {type(model).__name__} (a minute or more for a large model)")
    path = saved_model(model, f"{args.base_path}/{args.name}", args.version, args.max_new_tokens,
                       warmup_batch_size=args.warmup_batch_size, progress=_say)
    _say(f"Written in {time.time() - started:.0f} s")
    print(f"Exported {path}")
    if args.check:
        _check_export(path)


def _check_export(path):
    from tflm.export import audit

    _say(f"Checking {path} in a process without tflm and tensorflow-text")
    report = audit.check(path)
    problems = audit.problems(report)
    if problems:
        raise RuntimeError(f"{path} fails the check: " + "; ".join(problems))
    print(f"{path}: {len(report['ops'])} op types, all in core TensorFlow; loads and answers "
          f"{report['warmup_requests']} warm-up requests without tflm or tensorflow-text "
          f"(signatures: {', '.join(report['signatures'])}).")


def add_serve_command(commands):
    parser = _add_command(
        commands, "serve", "serve SavedModels with TF Serving's REST and gRPC APIs",
        "Serve the versions of one exported model with TF Serving's REST API "
        "(--rest-api-port) and gRPC API (--port). The flags are TF Serving's; its "
        "underscore spellings (--model_base_path, --rest_api_port, ...) work too.")
    flag = parser.add_argument  # kebab-case first: the help and usage show that spelling
    flag("--model-base-path", "--model_base_path", required=True, metavar="DIR",
         help="the folder of the model's versions (saved_models/NAME)")
    flag("--model-name", "--model_name", metavar="NAME", help="the name in URLs and requests (default: the folder's)")
    flag("--port", type=int, default=None, metavar="PORT",
         help="the gRPC port (0: no gRPC), as in TF Serving; the REST port is --rest-api-port "
              "(default: 8500)")
    flag("--rest-api-port", "--rest_api_port", type=int, default=None, metavar="PORT",
         help="the REST port (0: no REST API) (default: 8501)")
    flag("--host", default="0.0.0.0",
         help="the address to listen on (as TF Serving: every interface); "
              "use 127.0.0.1 behind a proxy on the same machine")
    flag("--rest-api-timeout-in-ms", "--rest_api_timeout_in_ms", type=int, default=30000, metavar="MS",
         help="a REST prediction that takes longer is answered 504")
    flag("--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds", type=float,
         default=1.0, metavar="SECONDS", help="seconds between scans of the base path for new versions (0: scan once)")
    flag("--model-version-policy", "--model_version_policy", type=_version_policy,
         default="latest", metavar="POLICY", help="latest (the newest version), all, or specific:1,3 (those versions)")
    flag("--enable-batching", "--enable_batching", type=_boolean, nargs="?", const=True,
         default=False, metavar="true|false",
         help="merge concurrent requests into batches, as TF Serving does")
    flag("--batching-parameters-file", "--batching_parameters_file", metavar="FILE",
         help="TF Serving's batching parameters (max_batch_size { value: 32 } ...), "
              "used with --enable-batching")
    flag("--rest-api-num-threads", "--rest_api_num_threads", type=int, default=None, metavar="N",
         help="threads that run REST predictions (default: 4 per CPU, as TF Serving)")
    flag("--max-batch-size", "--max_batch_size", type=int, default=64, metavar="ROWS",
         help="the most rows in one request")
    flag("--max-body-bytes", "--max_body_bytes", type=int, default=1 << 20, metavar="BYTES",
         help="the largest REST body or gRPC message, in bytes")
    flag("--monitoring", type=_boolean, nargs="?", const=True, default=False,
         metavar="true|false", help="serve Prometheus metrics at /monitoring/prometheus/metrics")
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
              "listens on --rest-api-port (8501).", file=sys.stderr)
    grpc_port = 8500 if args.port is None else args.port
    rest_port = 8501 if args.rest_api_port is None else args.rest_api_port
    if grpc_port == 0 and rest_port == 0:
        raise ValueError("--port 0 and --rest-api-port 0 leave nothing to serve.")
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
    parser = _add_command(
        commands, "convert", "convert a model: a Hugging Face checkpoint to tflm, or tflm to Hugging Face",
        "Write the model a handle names as a .keras file or a tflm preset directory, "
        "or with --to-huggingface as a Hugging Face model directory.")
    parser.add_argument("source", help=MODEL_HANDLE)
    parser.add_argument("output", nargs="?",
                        help="a .keras file, or a directory to write as a tflm preset")
    parser.add_argument("--output", dest="output_flag", metavar="OUTPUT",
                        help="the same as the OUTPUT argument")
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
    parser = _add_command(
        commands, "finetune", "fine-tune a pretrained encoder as a text classifier",
        "Put a classification head on a pretrained encoder and train both on labelled text "
        "(AdamW, warmup then linear decay), keeping the best model on the validation data.")
    parser.add_argument("--pretrained", required=True, help=f"the encoder: {MODEL_HANDLE}")
    parser.add_argument("--train", required=True, metavar="FILE", help="labelled CSV, TSV or JSONL")
    parser.add_argument("--valid", metavar="FILE",
                        help="labelled validation file (default: 10%% of --train held out)")
    parser.add_argument("--text-column", default="text", help="the column (or JSON key) of the texts")
    parser.add_argument("--label-column", default="label", help="the column (or JSON key) of the labels")
    parser.add_argument("--output", default="classifier.keras", help="where the classifier is saved")
    parser.add_argument("--seq-len", type=int, default=128, help="longest text in tokens")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per training step")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="the peak learning rate")
    parser.add_argument("--warmup", type=float, default=0.06,
                        help="fraction of the steps over which the learning rate rises to its peak")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training data")
    parser.add_argument("--layer-decay", type=float,
                        help="layer-wise learning-rate decay, e.g. 0.9: each layer below the top "
                             "learns at 0.9 times the rate of the one above (default: none)")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between validations")
    parser.add_argument("--patience", type=int, default=3,
                        help="stop after this many validations without improvement")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the head's initialization, the held-out split and the shuffling")
    parser.add_argument("--log-dir",
                        help="TensorBoard logs (default: beside --output: classifier-logs/ for "
                             "classifier.keras)")
    parser.add_argument("--checkpoint-dir",
                        help="checkpoints, resumed from when they hold the same run (default: "
                             "beside --output: classifier-checkpoints/)")
    parser.add_argument("--log-every", type=int, default=10, help="steps between TensorBoard points")
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept")
    parser.set_defaults(run=finetune)


def finetune(args):
    from tflm.training.finetune import finetune

    finetune(args.pretrained, args.train, args.valid, args.output, args.text_column,
             args.label_column, seq_len=args.seq_len, batch_size=args.batch_size,
             learning_rate=args.learning_rate, warmup=args.warmup, epochs=args.epochs,
             layer_decay=args.layer_decay, eval_every=args.eval_every, patience=args.patience,
             seed=args.seed, log_dir=args.log_dir, checkpoint_dir=args.checkpoint_dir,
             log_every=args.log_every, keep_checkpoints=args.keep_checkpoints)


def add_classify_command(commands):
    parser = _add_command(
        commands, "classify", "label texts with a saved text classifier",
        "Print one line per text: its label, the label's probability and the text, "
        "separated by tabs (or a JSON object per line with --json).")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="a text to classify")
    parser.add_argument("--model", required=True, help=f"the Classifier: {MODEL_HANDLE}")
    parser.add_argument("--file", help="also classify each line of this file ('-': standard input)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per batch")
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines: text, label, probability and every label's "
                             "probability")
    parser.set_defaults(run=classify)


def classify(args):
    import json

    texts = list(args.texts)
    if args.file is not None:
        if args.file == "-":
            texts += sys.stdin.read().splitlines()
        else:
            with open(args.file, encoding="utf-8") as file:
                texts += file.read().splitlines()
    if not texts:
        raise ValueError("classify needs texts: as arguments, or in a file with --file FILE "
                         "('-' for standard input).")
    from tflm.models import Classifier

    model = _load_model_with_tokenizer(args.model, "read text")
    if not isinstance(model, Classifier):
        raise ValueError(f"{args.model} holds a {type(model).__name__}, not a Classifier.")
    names = model.label_names or [str(i) for i in range(model.num_classes)]
    labels, probabilities = model.classify(texts, return_probabilities=True,
                                           batch_size=args.batch_size)
    for text, label, row in zip(texts, labels, probabilities):
        probability = float(row.max())
        if args.json:
            print(json.dumps({"text": text, "label": label, "probability": probability,
                              "probabilities": dict(zip(names, map(float, row)))}))
        else:
            print(f"{label}\t{probability:.4f}\t{text}")


def add_generate_command(commands):
    parser = _add_command(commands, "generate", "continue a prompt with a saved GPT",
                          "Print the prompt and its continuation (greedy unless a sampling "
                          "flag is given).")
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--model", required=True, help=f"the GPT: {MODEL_HANDLE}")
    parser.add_argument("--max-new-tokens", type=int,
                        help=f"tokens to generate at most (default: {GENERATE_MAX_NEW_TOKENS})")
    parser.add_argument("--temperature", type=float,
                        help="sample at this temperature (default: greedy, or 1 with --top-k "
                             "or --top-p)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="nucleus sampling with this probability mass")
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search with this many beams (1: no beam search)")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search: scores are divided by length to this power")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="divide the scores of tokens already in the text by this (1: none)")
    parser.add_argument("--seed", type=int, help="the same seed gives the same text")
    parser.add_argument("--truncate", action="store_true",
                        help="keep the end of a prompt that leaves no room in the context, "
                             "instead of refusing it")
    parser.add_argument("--stream", action="store_true", help="print tokens as they come")
    parser.add_argument("--quantize", choices=("int8",),
                        help="quantize the GPT's weights first (GPT.quantize): int8 weights and "
                             "activations, faster at batch 8 and above on CPUs with VNNI, not at batch 1")
    parser.set_defaults(run=generate)


def generate(args):
    model = _quantized(_load_model_with_tokenizer(args.model, "take a text prompt"), args.quantize)
    options = dict(sampler=sampler_from_flags(args), seed=args.seed, truncate=args.truncate)
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    if args.stream and args.num_beams == 1:
        print(args.prompt, end="", flush=True)
        for piece in model.stream(args.prompt, **options):
            print(piece, end="", flush=True)
        print()
    else:
        print(args.prompt + model.generate(args.prompt, **options))


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


COMMANDS = (add_train_command, add_eval_command, add_generate_command, add_export_command,
            add_serve_command, add_convert_command, add_finetune_command, add_classify_command)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tflm", description="Language models with Keras 3: train, evaluate and sample from "
                                 "GPTs, fine-tune classifiers, convert, export and serve models. "
                                 "`tflm COMMAND --help` explains a command.")
    parser.add_argument("--version", action="version", version=f"tflm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


# An absl log line: its severity (Info, Warning, Error, Fatal), then MMDD and the time.
ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d\d")
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
NO_CUDA_DEVICE = "failed call to cuInit"  # an error only where there is an NVIDIA device


def import_tensorflow_quietly():
    """Import TensorFlow and find its devices with its C++ log at TF_CPP_MIN_LOG_LEVEL: 2
    (errors only) unless the user set it. TensorFlow's libraries log as they load, before
    they read the level, so stderr's file descriptor is caught meanwhile and the lines
    below the level dropped, with CUDA's complaint on a machine without NVIDIA devices."""
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = int(level) if level.isdigit() else 0
    if level == 0 or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    import tempfile

    sys.stderr.flush()
    stderr = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # CUDA's start-up (devices are set up later)
        finally:
            sys.stderr.flush()
            os.dup2(stderr, 2)
            os.close(stderr)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not _below_level(line, level):
                    sys.stderr.write(line)


def _below_level(line, level):
    match = ABSL_LINE.match(line)
    if match is None:
        return line.startswith(ABSL_BANNER) and level >= 2  # the banner is a warning
    if NO_CUDA_DEVICE in line and not os.path.exists("/dev/nvidiactl"):
        return True
    return "IWEF".index(match.group(1)) < level


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import_tensorflow_quietly()
        import tflm.models  # noqa: F401  registers the models with Keras, as `import tflm` does

        args.run(args)
    except USER_ERRORS as error:
        # One line, no traceback: the message names the problem (file, value or key).
        raise SystemExit(f"tflm: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
