"""Long jobs say how far they got: tokenizing a corpus and training a BPE or WordPiece
vocabulary print progress lines once they take more than a few seconds (the thresholds are
set to zero here), and nothing when asked not to."""

import re

import tflm.data.language_modeling as language_modeling
import tflm.tokenizers.bpe as bpe
import tflm.tokenizers.wordpiece as wordpiece
from tflm.data.corpora import tiny_shakespeare
from tflm.tokenizers import BPETokenizer, CharTokenizer, WordPieceTokenizer

TEXT = tiny_shakespeare().read_text()[:150_000]


def test_tokenizing_a_corpus_reports_its_tokens(monkeypatch, capsys):
    documents = [TEXT[:100_000], TEXT[100_000:]]
    tokenizer = CharTokenizer.train(TEXT)
    ids = language_modeling.token_ids(documents, tokenizer)
    assert capsys.readouterr().out == ""  # under the threshold: quiet
    monkeypatch.setattr(language_modeling, "PROGRESS_AFTER_SECONDS", 0)
    monkeypatch.setattr(language_modeling, "PROGRESS_EVERY_SECONDS", 0)
    assert language_modeling.token_ids(documents, tokenizer).tolist() == ids.tolist()
    lines = capsys.readouterr().out.splitlines()
    # 150,000 characters (and an EOS per document when the tokenizer has one) in chunks of 65,536
    total = len(TEXT) + (3 if tokenizer.eos_token_id is not None else 0)
    assert len(ids) == total
    counts = [int(re.search(r": ([\d,]+) tokens", line).group(1).replace(",", "")) for line in lines]
    assert counts == [65_536, 131_072, total, total]
    assert lines[0].startswith("Tokenizing 2 documents: 65,536 tokens so far")
    assert lines[-1].startswith(f"Tokenized 2 documents: {total:,} tokens in ")
    language_modeling.token_ids(documents, tokenizer, progress=False)
    assert capsys.readouterr().out == ""


def test_bpe_training_reports_words_and_merges(monkeypatch, capsys):
    BPETokenizer.train(TEXT[:20_000], 256 + 1 + 300)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(bpe, "PROGRESS_AFTER_SECONDS", 0)
    monkeypatch.setattr(bpe, "PROGRESS_EVERY_SECONDS", 0)
    BPETokenizer.train(TEXT[:20_000], 256 + 1 + 300)  # 300 merges: the EOS token is one more
    lines = capsys.readouterr().out.splitlines()
    words = set(bpe.regex.findall(bpe.PATTERNS["gpt2"], TEXT[:20_000]))
    assert lines[0].startswith(f"BPE: counted {len(words):,} distinct words in ")
    assert lines[0].endswith("learning 300 merges")
    assert [line.split(" (")[0] for line in lines[1:4]] == [
        "BPE: merges 100/300", "BPE: merges 200/300", "BPE: merges 300/300"]
    assert re.fullmatch(r"BPE: learned 300 merges in \d+ s\.", lines[4]) and len(lines) == 5
    BPETokenizer.train(TEXT[:20_000], 256 + 1 + 300, progress=False)
    assert capsys.readouterr().out == ""


def test_wordpiece_training_says_it_is_at_work(monkeypatch, capsys):
    WordPieceTokenizer.train(TEXT[:5_000], 200)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(wordpiece, "PROGRESS_AFTER_SECONDS", 0)
    WordPieceTokenizer.train(TEXT[:5_000], 200)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "WordPiece: training a vocabulary of 200 tokens..."
    assert re.fullmatch(r"WordPiece: trained 200 tokens in \d+ s\.", lines[1]) and len(lines) == 2
    WordPieceTokenizer.train(TEXT[:5_000], 200, progress=False)
    assert capsys.readouterr().out == ""
