"""The `tflm` command from the shell: a user's mistake is one clean line and a non-zero exit."""

import os
import subprocess
import sys

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


def tflm(*args):
    return subprocess.run([sys.executable, "-m", "tflm", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


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
    (["finetune", "--pretrained", "hf://someone/missing", "--train", "{out}"],
     "tflm: hf://someone/missing: the repository 'someone/missing' is not in the Hugging Face "
     "cache ({cache}) and HF_HUB_OFFLINE is set."),
])
def test_a_flag_that_takes_a_model_names_what_it_could_not_load(tmp_path, args, message):
    """Preset names are architectures: where weights are needed they are refused, with the
    Hub's name for the weights; an hf:// handle the cache lacks names the repository."""
    paths = {"out": tmp_path / "out", "cache": tmp_path / "hf-cache"}
    env = {**os.environ, "HF_HUB_CACHE": str(paths["cache"]), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "tflm", *(a.format(**paths) for a in args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(**paths))
