import json

import numpy as np
import pytest

from tflm.data import classification_dataset
from tflm.tokenizers import ByteTokenizer, WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]


def write_rows(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if kind == "tsv" else ","
        keys = list(rows[0])
        path.write_text(sep.join(keys) + "\n" + "".join(sep.join(str(r[k]) for k in keys) + "\n" for r in rows))


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_reads_each_format_with_dynamic_padding(tmp_path, kind):
    rows = [
        {"sentence": "good film", "sentiment": "pos"},
        {"sentence": "very very bad film", "sentiment": "neg"},
        {"sentence": "bad", "sentiment": "neg"},
    ]
    path = tmp_path / f"data.{kind}"
    write_rows(path, rows, kind)
    ds = classification_dataset(
        str(path), WordPieceTokenizer(VOCAB), text_column="sentence", label_column="sentiment",
        batch_size=2, shuffle=False,
    )
    assert ds.label_names == ["neg", "pos"]
    (first, labels), (second, labels_2) = list(ds)
    np.testing.assert_array_equal(
        first["token_ids"], [[2, 5, 7, 3, 0, 0], [2, 8, 8, 6, 7, 3]]
    )  # [CLS] ... [SEP], padded to the longest in the batch
    np.testing.assert_array_equal(first["padding_mask"][0], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(labels, [1, 0])
    assert second["token_ids"].shape == (1, 3)  # the next batch pads to its own longest
    np.testing.assert_array_equal(labels_2, [0])


def test_truncates_to_seq_len_and_keeps_given_label_order(tmp_path):
    path = tmp_path / "d.tsv"
    write_rows(path, [{"text": "x" * 50, "label": 1}, {"text": "hi", "label": 0}], "tsv")
    ds = classification_dataset(str(path), ByteTokenizer(), seq_len=10, label_names=["1", "0"], shuffle=False)
    inputs, labels = next(iter(ds))
    assert inputs["token_ids"].shape == (2, 10)  # 9 bytes + eos
    np.testing.assert_array_equal(labels, [0, 1])


def test_sst2_labels(tmp_path):
    ds = classification_dataset("tests/data/sst2_sample.tsv", ByteTokenizer(), batch_size=8)
    assert ds.label_names == ["0", "1"]


def test_bad_files_are_errors(tmp_path):
    path = tmp_path / "d.csv"
    write_rows(path, [{"text": "a", "label": "yes"}, {"text": "b", "label": "maybe"}], "csv")
    with pytest.raises(ValueError, match="no column 'sentence'; the columns are \\['label', 'text'\\]"):
        classification_dataset(str(path), ByteTokenizer(), text_column="sentence")
    with pytest.raises(ValueError, match="row 2: unknown label 'maybe'; the labels are \\['yes', 'no'\\]"):
        classification_dataset(str(path), ByteTokenizer(), label_names=["yes", "no"])
    with pytest.raises(FileNotFoundError):
        classification_dataset(str(tmp_path / "none.csv"), ByteTokenizer())
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unknown format"):
        classification_dataset(str(tmp_path / "d.xml"), ByteTokenizer())


def test_bucket_by_length_pads_less_and_keeps_every_example_once():
    rng = np.random.default_rng(0)
    texts = ["x" * int(n) for n in rng.integers(1, 60, size=500)]
    texts = [f"{i:03d}{text}" for i, text in enumerate(texts)]  # each text unique
    labels = [len(text) % 2 for text in texts]
    tokenizer = ByteTokenizer()

    def epoch(**options):
        ds = classification_dataset((texts, labels), tokenizer, batch_size=16, seed=1, **options)
        seen, padded = {}, 0
        for inputs, batch_labels in ds:
            ids, mask = inputs["token_ids"].numpy(), inputs["padding_mask"].numpy()
            padded += ids.size
            for row, row_mask, label in zip(ids, mask, batch_labels.numpy()):
                text = bytes(int(t) for t in row[row_mask][:-1]).decode()  # drop the eos
                seen[text] = label
        return seen, padded

    plain, plain_tokens = epoch()
    bucketed, bucketed_tokens = epoch(bucket_by_length=True)
    expected = {text: str(label) for text, label in zip(texts, labels)}
    assert {text: ["0", "1"][label] for text, label in bucketed.items()} == expected
    assert len(bucketed) == len(plain) == len(texts)
    real_tokens = sum(len(text) + 1 for text in texts)
    assert bucketed_tokens - real_tokens < 0.2 * (plain_tokens - real_tokens)
