"""The `tflm` command from the shell: a user's mistake is one clean line and a non-zero exit."""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, tiny_gpt
from tflm.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.keras"
    model = tiny_gpt(vocab_size=257, max_sequence_length=16, tokenizer=ByteTokenizer())
    model.build((1, 4))
    model.save(path)
    return path


def tflm(*args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "tflm", *map(str, args)], cwd=ROOT, env=env,
                          input=input, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["generate", "--model", "{missing}", "Hi"], "tflm: cannot load a model from '{missing}': "),
    (["generate", "--model", "{model}", "Hi", "--top-p", "1.5"], "tflm: p must be in (0, 1]; got 1.5."),
    (["generate", "--model", "{model}", "Hi", "--temperature", "0"],
     "tflm: temperature must be positive; got 0.0."),
    (["eval", "--model", "{model}", "{missing}"], "tflm: Corpus file not found: '{missing}'."),
])
def test_a_user_error_is_one_line_without_a_traceback(model_path, tmp_path, args, message):
    paths = {"model": model_path, "missing": tmp_path / "missing.keras"}
    result = tflm(*(arg.format(**paths) for arg in args))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(**paths))
    assert result.stdout == ""


def test_a_bad_flag_value_is_a_usage_error(model_path):
    result = tflm("generate", "--model", model_path, "Hi", "--top-k", "many")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("argument --top-k: invalid int value: 'many'")


def test_every_command_has_its_parser():
    from tflm.cli import build_parser

    parser = build_parser()
    for command in ("train", "eval", "export", "serve", "convert", "finetune", "generate"):
        with pytest.raises(SystemExit) as exit:
            parser.parse_args([command, "--help"])
        assert exit.value.code == 0


@pytest.mark.parametrize("args, message", [
    (["convert", "gpt2-124m", "{out}"],
     "tflm: 'gpt2-124m' is a preset of GPT: an architecture with fresh weights, not a "
     "checkpoint. For pretrained weights, use hf://openai-community/gpt2."),
    (["generate", "--model", "gpt2", "Hi"],
     "tflm: cannot load a model from 'gpt2': Unknown preset 'gpt2'; available presets: "),
    (["train", "--init-from", "bert-base", "--set", "output.dir={out}"],
     "tflm: 'bert-base' is a preset of Encoder: an architecture with fresh weights, not a "
     "checkpoint. For pretrained weights, use hf://google-bert/bert-base-uncased."),
    (["finetune", "--pretrained", "hf://someone/missing", "--train", "{train}"],
     "tflm: hf://someone/missing: the repository 'someone/missing' is not in the Hugging Face "
     "cache ({cache}) and HF_HUB_OFFLINE is set."),
])
def test_a_flag_that_takes_a_model_names_what_it_could_not_load(tmp_path, args, message):
    """Preset names are architectures: where weights are needed they are refused, with the
    Hub's name for the weights; an hf:// handle the cache lacks names the repository."""
    paths = {"out": tmp_path / "out", "cache": tmp_path / "hf-cache", "train": tmp_path / "train.tsv"}
    paths["train"].write_text("text\tlabel\na fine film\tpositive\ndull\tnegative\n")
    env = {**os.environ, "HF_HUB_CACHE": str(paths["cache"]), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "tflm", *(a.format(**paths) for a in args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(**paths))


# -- the first minute: help, version, quiet start-up ------------------------------------------

IMPORTS_TENSORFLOW = re.compile(r"\| (tensorflow|keras)(\.|$)", re.M)


def run_with_import_log(command, *args):
    """`command` (["-m", "tflm"] or a console script) with Python's import log on stderr."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-X", "importtime", *command, *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def console_script(tmp_path_factory):
    """What pip writes as bin/tflm for the entry point tflm.cli:main."""
    path = tmp_path_factory.mktemp("bin") / "tflm"
    path.write_text("import sys\nfrom tflm.cli import main\nsys.exit(main())\n")
    return [str(path)]


@pytest.mark.parametrize("how", ["module", "script"])
@pytest.mark.parametrize("args, status, expected", [
    (["--help"], 0, "usage: tflm [-h] [--version] COMMAND ..."),
    (["train", "--help"], 0, "usage: tflm train [-h]"),
    (["classify", "--help"], 0, "usage: tflm classify [-h]"),
    (["--version"], 0, "tflm 0."),
    (["generate", "Hi"], 2, "the following arguments are required: --model"),
    (["serve", "--model-base-path", "x", "--port", "many"], 2, "invalid int value: 'many'"),
])
def test_help_and_usage_errors_answer_without_importing_tensorflow(console_script, how, args,
                                                                   status, expected):
    command = ["-m", "tflm"] if how == "module" else console_script
    result, seconds = run_with_import_log(command, *args)
    assert result.returncode == status, result.stderr[-2000:]
    assert expected in result.stdout + result.stderr
    assert not IMPORTS_TENSORFLOW.findall(result.stderr)
    assert seconds < 3  # a hang guard: it takes a tenth of a second, TensorFlow alone 4 s


def test_version_is_the_package_version():
    from tflm import __version__

    result = tflm("--version")
    assert result.stdout == f"tflm {__version__}\n"


def test_import_tflm_elsewhere_still_registers_the_models(model_path):
    """Only the command defers the imports: a bare `import tflm` lets Keras load tflm models."""
    code = (f"import tflm, keras; model = keras.saving.load_model({str(model_path)!r}); "
            "print(type(model).__name__, type(model) is tflm.GPT)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout == "GPT True\n", result.stderr[-2000:]


TENSORFLOW_START_UP = re.compile(r"cuda|oneDNN|I0000|absl::InitializeLog|cpu_feature_guard", re.I)


def test_a_command_keeps_tensorflow_quiet_unless_the_user_asks(model_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = tflm("generate", "--model", model_path, "Hi", "--max-new-tokens", "2", env=env)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.startswith("Hi")
    assert not TENSORFLOW_START_UP.findall(quiet.stderr), quiet.stderr
    loud = tflm("generate", "--model", model_path, "Hi", "--max-new-tokens", "2",
                        env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert loud.returncode == 0
    assert TENSORFLOW_START_UP.findall(loud.stderr)  # TensorFlow's own lines, as it prints them


def test_every_option_is_explained_with_its_default():
    from tflm.cli import HelpFormatter, build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(commands.choices) == 8
    for name, command in commands.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"tflm {name} {action.option_strings or action.dest}"
            assert action.help and len(action.help) > 10, where
            shown = HelpFormatter(name)._get_help_string(action) % vars(action)
            if action.default not in (None, False, []):
                assert f"default: {action.default}" in shown or "default" in action.help, where
            # kebab-case; serve also takes TF Serving's spelling of the same flag, after it
            assert action.option_strings[:1] == [o for o in action.option_strings if "_" not in o][:1]
            for option in action.option_strings:
                assert option.replace("_", "-") in action.option_strings, where
        help_text = command.format_help()
        assert not re.search(r"\n\s+--\w+_", help_text), name  # one spelling in the help


def test_serve_takes_tf_servings_spellings():
    from tflm.cli import build_parser

    parser = build_parser()
    kebab = parser.parse_args(["serve", "--model-base-path", "m", "--rest-api-port", "1",
                               "--enable-batching=true", "--model-version-policy", "all"])
    underscore = parser.parse_args(["serve", "--model_base_path", "m", "--rest_api_port", "1",
                                    "--enable_batching=true", "--model_version_policy", "all"])
    assert vars(kebab) == vars(underscore)
    assert (kebab.model_base_path, kebab.rest_api_port, kebab.enable_batching) == ("m", 1, True)


def test_generate_uses_the_librarys_default_length(tmp_path):
    """One default: the command's --max-new-tokens is GPT.generate's, and the text it prints
    is the one Python gives."""
    import inspect

    import keras

    from tflm import generation
    from tflm.cli import GENERATE_MAX_NEW_TOKENS
    from tflm.models import GPT

    for function in (GPT.generate, GPT.stream, generation.generate, generation.stream):
        default = inspect.signature(function).parameters["max_new_tokens"].default
        assert default == GENERATE_MAX_NEW_TOKENS, function
    keras.utils.set_random_seed(0)
    model = tiny_gpt(vocab_size=257, max_sequence_length=96, tokenizer=ByteTokenizer())
    model.build((1, 4))
    model.save(tmp_path / "gpt.keras")
    model = keras.saving.load_model(tmp_path / "gpt.keras")
    expected = model.generate("Hi")
    # the text goes on past the default (no end token), so another length would show
    assert model.generate("Hi", max_new_tokens=GENERATE_MAX_NEW_TOKENS + 1) != expected
    result = tflm("generate", "--model", tmp_path / "gpt.keras", "Hi")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "Hi" + expected + "\n"


# -- tflm classify ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    import keras

    from tflm.models import Classifier, Encoder
    from tflm.tokenizers import WordPieceTokenizer

    lines = ["a good movie", "a bad movie", "good acting and a good plot", "bad and dull"] * 10
    tokenizer = WordPieceTokenizer.train(lines, 60)
    keras.utils.set_random_seed(0)
    encoder = Encoder.from_preset("bert-tiny", vocab_size=tokenizer.vocabulary_size(),
                                  max_sequence_length=32)
    model = Classifier(encoder, 3, label_names=["negative", "neutral", "positive"],
                       tokenizer=tokenizer)
    model.build({"token_ids": (None, 8), "padding_mask": (None, 8)})
    path = tmp_path_factory.mktemp("classifier") / "classifier.keras"
    model.save(path)
    return path


def reference_probabilities(path, texts):
    """Softmax of the saved classifier's logits on [CLS] text [SEP], token by token."""
    import keras
    import numpy as np

    model = keras.saving.load_model(path, compile=False)
    tokenizer = model.tokenizer
    rows = []
    for text in texts:
        ids = [tokenizer.token_to_id("[CLS]"), *np.asarray(tokenizer.tokenize(text)).tolist(),
               tokenizer.token_to_id("[SEP]")]
        logits = np.asarray(model({"token_ids": np.array([ids]),
                                   "padding_mask": np.ones((1, len(ids)), bool)}), np.float64)[0]
        rows.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    return model.label_names, np.array(rows)


def test_classify_prints_a_label_and_its_probability_per_text(classifier_path, tmp_path):
    texts = ["a good movie", "bad and dull", "good acting"]
    names, probabilities = reference_probabilities(classifier_path, texts)
    (tmp_path / "texts.txt").write_text(texts[2] + "\n")
    result = tflm("classify", "--model", classifier_path, texts[0], texts[1],
                  "--file", tmp_path / "texts.txt")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, text, row in zip(lines, texts, probabilities):
        label, probability, printed = line.split("\t")
        assert (label, printed) == (names[row.argmax()], text)
        assert float(probability) == pytest.approx(row.max(), abs=2e-4)

    as_json = tflm("classify", "--model", classifier_path, "--json", "--file", "-",
                   input="\n".join(texts) + "\n")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    for line, text, row in zip(as_json.stdout.splitlines(), texts, probabilities, strict=True):
        answer = json.loads(line)
        assert (answer["text"], answer["label"]) == (text, names[row.argmax()])
        assert answer["probability"] == pytest.approx(row.max(), abs=1e-5)
        assert [answer["probabilities"][n] for n in names] == pytest.approx(row, abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--model", "{classifier}"], "tflm: classify needs texts"),
    (["--model", "{gpt}", "Hi"], "tflm: {gpt} holds a GPT, not a Classifier."),
])
def test_classify_refuses_no_text_and_a_model_that_does_not_classify(classifier_path, model_path,
                                                                     args, message):
    paths = {"classifier": classifier_path, "gpt": model_path}
    result = tflm("classify", *(a.format(**paths) for a in args))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(**paths))


# -- long work is visible -----------------------------------------------------------------

def test_eval_draws_its_progress_on_stderr_when_asked(model_path, tmp_path):
    (tmp_path / "text.txt").write_text("Some text to read, long enough for a few blocks. " * 8)
    runs = {verbose: tflm("eval", "--model", model_path, tmp_path / "text.txt",
                          *(["--verbose", verbose] if verbose else []))
            for verbose in ("1", "0", None)}
    for verbose, result in runs.items():
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith(f"{tmp_path / 'text.txt'}: loss ")  # stdout: the result
        assert ("step" in result.stderr) == (verbose == "1"), (verbose, result.stderr)


def test_eval_draws_its_progress_by_default_in_a_terminal(model_path, tmp_path):
    import pty

    (tmp_path / "text.txt").write_text("Some text to read, long enough for a few blocks. " * 8)
    terminal, stderr = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "tflm", "eval", "--model", str(model_path),
                                str(tmp_path / "text.txt")], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=stderr, text=True)
    os.close(stderr)
    drawn = b""
    while True:  # read as it comes, so that a full terminal buffer never blocks the command
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the command ended and closed its end
            break
        if not chunk:
            break
        drawn += chunk
    assert process.wait(timeout=300) == 0
    os.close(terminal)
    assert process.stdout.read().startswith(f"{tmp_path / 'text.txt'}: loss ")
    assert b"step" in drawn


def test_export_says_what_it_is_doing(model_path, tmp_path):
    result = tflm("export", "--model", model_path, "--name", "tiny", "--base-path", tmp_path,
                  "--warmup-batch-size", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"Exported {tmp_path / 'tiny' / '1'}\n"
    steps = [line for line in result.stderr.splitlines() if line.split(" ")[0] in
             ("Loading", "Exporting", "Tracing", "Writing", "Written")]
    expected = [f"Loading {model_path}", "Exporting the GPT", *(
        f"Tracing the {name} signature" for name in (
            "serving_default", "generate", "generate_tokens", "logits")),
        "Writing the SavedModel", "Written in"]
    assert len(steps) == len(expected), result.stderr
    for step, start in zip(steps, expected):
        assert step.startswith(start), result.stderr


def test_generate_and_export_quantize_to_int8_first(tmp_path, capsys):
    import keras
    import tensorflow as tf

    from tflm.cli import main

    keras.utils.set_random_seed(2)
    model = tiny_gpt(vocab_size=257, hidden_dim=64, num_heads=4, num_kv_heads=1,
                     intermediate_dim=128, num_layers=2, max_sequence_length=48,
                     position="rotary", tie_embeddings=False, tokenizer=ByteTokenizer())
    model.build((1, 8))
    model.set_weights([w * 3 for w in model.get_weights()])  # sharp enough to choose
    path = tmp_path / "model.keras"
    model.save(path)
    quantized = keras.saving.load_model(path)
    quantized.quantize("int8")
    expected = quantized.generate("Hi", 12, stop_tokens=None)
    assert expected != model.generate("Hi", 12, stop_tokens=None)  # int8 chooses otherwise

    main(["generate", "--model", str(path), "Hi", "--max-new-tokens", "12", "--quantize", "int8"])
    assert capsys.readouterr().out == "Hi" + expected + "\n"

    main(["export", "--model", str(path), "--name", "int8", "--base-path", str(tmp_path),
          "--warmup-batch-size", "0", "--max-new-tokens", "12", "--quantize", "int8"])
    exported = tf.saved_model.load(str(tmp_path / "int8" / "1"))
    assert any(variable.dtype == tf.int8 for variable in exported.variables)
    completions = exported.signatures["serving_default"](prompts=tf.constant(["Hi"]))["completions"]
    assert completions.numpy()[0].decode("utf-8", errors="replace") == expected
