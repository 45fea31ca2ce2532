"""Generation with tokenizers (text in, text out) and the `tflm generate` command."""

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import tiny_gpt
from tflm.tokenizers import ByteTokenizer, CharTokenizer


@pytest.fixture(scope="module")
def byte_model(make_gpt):
    return make_gpt(vocab_size=257, tokenizer=ByteTokenizer())


def test_text_in_text_out(byte_model):
    tokenizer = byte_model.tokenizer
    text = byte_model.generate("héllo", max_new_tokens=10, stop_tokens=[])
    ids = byte_model.generate(np.asarray(tokenizer("héllo")).tolist(), 10)
    assert text == bytes(ids).decode("utf-8", errors="replace")
    batch = byte_model.generate(["héllo", "a"], max_new_tokens=10, stop_tokens=[])
    assert batch[0] == text and isinstance(batch[1], str)


def test_stream_text_matches_generate(byte_model):
    pieces = list(byte_model.stream("héllo wörld", 16, sampler="random", seed=5, stop_tokens=[]))
    assert "".join(pieces) == byte_model.generate(
        "héllo wörld", 16, sampler="random", seed=5, stop_tokens=[]
    )


def test_stop_tokens_by_name_and_eos_by_default(make_gpt):
    tokenizer = CharTokenizer.train("abcdef", eos_token="<eos>")
    model = make_gpt(vocab_size=7, tokenizer=tokenizer)
    options = dict(sampler="random", seed=1)
    ids = model.generate(np.asarray(tokenizer("abc")).tolist(), 30, stop_tokens=[], **options)
    eos = tokenizer.eos_token_id
    assert eos in ids  # this seed produces an EOS

    def text(ids):
        return "".join(tokenizer.get_vocabulary()[i] for i in ids)

    assert model.generate("abc", 30, **options) == text(ids[: ids.index(eos)])  # EOS by default
    assert model.generate("abc", 30, stop_tokens=["<eos>"], **options) == text(ids[: ids.index(eos)])
    letter = next(i for i in ids if i != eos)
    stopped = model.generate("abc", 30, stop_tokens=[text([letter])], **options)
    assert stopped == text(ids[: ids.index(letter)])


def test_cli_generates_from_a_saved_model(byte_model, tmp_path, capsys):
    from tflm.cli import main

    path = tmp_path / "model.keras"
    byte_model.save(path)
    expected = byte_model.generate("Hi", 12, sampler="top_k", k=5, seed=3, stop_tokens=None)
    main(["generate", "--model", str(path), "Hi", "--max-new-tokens", "12", "--top-k", "5", "--seed", "3"])
    assert capsys.readouterr().out == "Hi" + expected + "\n"
    result = subprocess.run(
        [sys.executable, "-m", "tflm", "generate", "--model", str(path), "Hi", "--max-new-tokens", "12",
         "--top-k", "5", "--seed", "3", "--stream"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "Hi" + expected + "\n"


def test_cli_errors_are_messages(tmp_path):
    from tflm.cli import main

    with pytest.raises(SystemExit, match="cannot load a model from"):
        main(["generate", "--model", str(tmp_path / "missing.keras"), "Hi"])
    model = tiny_gpt()
    model.build((1, 4))
    model.save(tmp_path / "bare.keras")
    with pytest.raises(SystemExit, match="has no tokenizer"):
        main(["generate", "--model", str(tmp_path / "bare.keras"), "Hi"])
