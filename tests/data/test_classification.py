import json

import numpy as np
import pytest

from tests.helpers import ROOT
from tflm.data import classification_dataset
from tflm.data.classification import read_labelled
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


def test_sst2_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sample is found wherever the tests run from
    sample = ROOT / "tests" / "data" / "sst2_sample.tsv"
    ds = classification_dataset(sample, ByteTokenizer(), batch_size=8)
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


def test_a_csv_row_without_its_label_or_text_names_the_file_and_line(tmp_path):
    path = tmp_path / "d.csv"
    # the quoted text spans lines 3-4, so the row after it starts on line 5
    path.write_text('text,label\ngood film,pos\n"bad,\nfilm",neg\nno label here\n')
    with pytest.raises(ValueError, match=r"d.csv, line 5: no label in column 'label'\."):
        read_labelled(path, "text", "label")
    path.write_text("text,label\ngood film,pos\n\nempty label,\n")
    with pytest.raises(ValueError, match=r"d.csv, line 4: no label in column 'label'\."):
        read_labelled(path, "text", "label")
    path.write_text("label,text\npos,good film\nneg\n")
    with pytest.raises(ValueError, match=r"d.csv, line 3: no text in column 'text'\."):
        read_labelled(path, "text", "label")
    # an unquoted comma in a text would shift the label
    path.write_text("text,label\ngood film,pos\nbad, bad film,neg\n")
    with pytest.raises(ValueError, match=r"d.csv, line 3: 3 fields, but the header names 2; quote"):
        read_labelled(path, "text", "label")
    # a comma that ends every line adds no field
    path.write_text("text,label,\ngood film,pos,\nbad film,neg,\n")
    assert read_labelled(path, "text", "label") == (["good film", "bad film"], ["pos", "neg"])


@pytest.mark.parametrize("line, error", [
    ('{"text": null, "label": "pos"}', "line 3: no text in column 'text'"),
    ('{"text": 7, "label": "pos"}', "line 3: the text \\('text'\\) is not a string: 7"),
    ('{"text": "ok", "label": null}', "line 3: no label in column 'label'"),
    ('{"text": "ok"}', "line 3: no label in column 'label'"),
    ('{"text": "ok", "label": ["pos"]}',
     "line 3: the label \\('label'\\) is not a string or a number: \\['pos'\\]"),
    ('["ok", "pos"]', "line 3: a JSON list; each line is an object"),
    ('{"text": "ok", "label": "pos"', "line 3: invalid JSON"),
])
def test_a_bad_json_line_names_the_file_and_line(tmp_path, line, error):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good film", "label": "pos"}\n\n' + line + "\n")  # line 2 is blank
    with pytest.raises(ValueError, match="d.jsonl, " + error):
        classification_dataset(str(path), ByteTokenizer())


def test_json_labels_may_be_numbers_and_texts_may_be_empty(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good", "label": 1}\n{"text": "", "label": 0}\n')
    assert read_labelled(path, "text", "label") == (["good", ""], ["1", "0"])


def test_a_directory_or_several_files_is_an_error_saying_what_to_pass(tmp_path):
    write_rows(tmp_path / "a.csv", [{"text": "a", "label": "yes"}], "csv")
    write_rows(tmp_path / "b.csv", [{"text": "b", "label": "no"}], "csv")
    with pytest.raises(IsADirectoryError, match="is a directory; pass a file or a glob"):
        classification_dataset(str(tmp_path), ByteTokenizer())
    with pytest.raises(ValueError, match=r"names 2 files; labelled data is one file"):
        classification_dataset(str(tmp_path / "*.csv"), ByteTokenizer())


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
