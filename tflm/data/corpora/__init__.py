"""Corpora shipped inside the package (see README.md beside this file for their origin)."""

from pathlib import Path

HERE = Path(__file__).parent


def tiny_shakespeare():
    """Path of tiny Shakespeare: 1,115,394 characters of Shakespeare's plays, public domain.

    From `data/tinyshakespeare/input.txt` of the char-rnn repository, the corpus that
    nanoGPT's shakespeare_char uses. Read it with `path.read_text()`.
    """
    return HERE / "tiny_shakespeare.txt"
