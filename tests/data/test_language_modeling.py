import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_gpt
from tflm.data import lm_dataset, mlm_dataset, sources
from tflm.data.corpora import tiny_shakespeare
from tflm.tokenizers import ByteTokenizer, CharTokenizer, WordPieceTokenizer

DOCUMENTS = ["The quick brown fox.", "jumps over", "the lazy dog!" * 3]


def stream(documents, tokenizer):
    """The token stream by hand: EOS, then each document followed by EOS."""
    eos = tokenizer.eos_token_id
    ids = [] if eos is None else [eos]
    for doc in documents:
        ids += np.asarray(tokenizer(doc)).tolist() + ([] if eos is None else [eos])
    return np.array(ids)


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.mark.parametrize("seq_len", [1, 4, 7, 16])
def test_packing_yields_floor_of_tokens_over_seq_len_blocks_shifted_by_one(seq_len):
    tokenizer = ByteTokenizer()
    ds = lm_dataset(DOCUMENTS, tokenizer, seq_len, batch_size=1, shuffle=False)
    tokens = stream(DOCUMENTS, tokenizer)
    targets = len(tokens) - 1  # every document token and separator, each predicted once
    got = batches(ds)
    assert len(got) == targets // seq_len
    for i, (x, y) in enumerate(got):
        np.testing.assert_array_equal(x[0], tokens[i * seq_len : (i + 1) * seq_len])
        np.testing.assert_array_equal(y[0], tokens[i * seq_len + 1 : (i + 1) * seq_len + 1])


def test_without_eos_documents_run_together():
    tokenizer = CharTokenizer.train("abcdefgh")
    got = batches(lm_dataset(["abcd", "efgh"], tokenizer, 3, 1, shuffle=False))
    assert [x[0].tolist() for x, _ in got] == [[0, 1, 2], [3, 4, 5]]
    assert [y[0].tolist() for _, y in got] == [[1, 2, 3], [4, 5, 6]]


def test_file_source_streams_the_same_as_its_text(tmp_path):
    text = "line one\nline two\n\nline four\n"
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text(text.upper())
    tokenizer = ByteTokenizer()
    from_files = batches(lm_dataset(str(tmp_path / "*.txt"), tokenizer, 5, 2, shuffle=False))
    from_list = batches(lm_dataset([text, text.upper()], tokenizer, 5, 2, shuffle=False))
    assert len(from_files) == len(from_list) > 0
    for (a, b), (c, d) in zip(from_files, from_list):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    from_dataset = lm_dataset(tf.data.Dataset.from_tensor_slices([text, text.upper()]), tokenizer, 5, 2, shuffle=False)
    np.testing.assert_array_equal(batches(from_dataset)[0][0], from_files[0][0])


def test_same_seed_same_batches_other_seed_other_batches():
    tokenizer = ByteTokenizer()
    docs = [f"document number {i} " * 5 for i in range(40)]

    def first_epoch(seed, batch_size=4, shuffle=True):
        ds = lm_dataset(docs, tokenizer, 8, batch_size, seed=seed, shuffle=shuffle)
        return np.concatenate([x for x, _ in batches(ds)])

    np.testing.assert_array_equal(first_epoch(1), first_epoch(1))
    assert not np.array_equal(first_epoch(1), first_epoch(2))
    # a permutation of the same blocks
    shuffled, unshuffled = first_epoch(1, batch_size=1), first_epoch(1, batch_size=1, shuffle=False)
    assert not np.array_equal(shuffled, unshuffled)
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, unshuffled))


def test_validation_split_is_the_contiguous_tail():
    tokenizer = CharTokenizer.train(tiny_shakespeare().read_text())
    train, validation = lm_dataset(
        tiny_shakespeare(), tokenizer, 256, 8, validation_split=0.1, subset="both", shuffle=False
    )
    tokens = np.asarray(tokenizer(tiny_shakespeare().read_text()))
    blocks = (len(tokens) - 1) // 256
    num_validation = int(blocks * 0.1)
    train_batches, validation_batches = batches(train), batches(validation)
    assert len(train_batches) == (blocks - num_validation) // 8
    assert len(validation_batches) == num_validation // 8
    start = (blocks - num_validation) * 256
    np.testing.assert_array_equal(validation_batches[0][0][0], tokens[start : start + 256])


def last_transformation(ds):
    """The op that yields `ds`'s elements and the constants it takes, read from the graph
    that tf.data serializes for the pipeline."""
    serialized = tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor)
    graph = tf.compat.v1.GraphDef.FromString(serialized.numpy())
    nodes = {node.name: node for node in graph.node}
    [output] = [node for node in graph.node if node.op == "_Retval"]
    last = nodes[output.input[0]]
    constants = [tf.make_ndarray(nodes[name].attr["value"].tensor) for name in last.input
                 if nodes[name].op == "Const"]
    return last.op, constants


def test_every_split_prefetches_full_batches():
    """The next batch is prepared while the model trains on this one: each split ends in
    a prefetch whose buffer tf.data tunes; every batch is full, its shape static."""
    docs = [f"document {i} " * 3 for i in range(30)]
    train, validation = lm_dataset(docs, ByteTokenizer(), 4, 2, validation_split=0.2,
                                   subset="both")
    endless = lm_dataset(docs, ByteTokenizer(), 4, 2, repeat=True)
    for ds in (train, validation, endless):
        assert last_transformation(ds) == ("PrefetchDataset", [tf.data.AUTOTUNE])
        assert ds.element_spec[0].shape == ds.element_spec[1].shape == (2, 4)
    assert all(x.shape == y.shape == (2, 4) for x, y in batches(train) + batches(validation))


def test_missing_empty_and_too_small_corpora_are_errors(tmp_path):
    tokenizer = ByteTokenizer()
    with pytest.raises(FileNotFoundError, match="not found: '.*nope.txt'"):
        lm_dataset(str(tmp_path / "nope.txt"), tokenizer, 8, 2)
    with pytest.raises(FileNotFoundError, match="No file matches"):
        lm_dataset(str(tmp_path / "*.md"), tokenizer, 8, 2)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="yields 0 block"):
        lm_dataset(str(tmp_path / "empty.txt"), tokenizer, 8, 2)
    with pytest.raises(ValueError, match="yields 1 block"):
        lm_dataset(["0123456789"], tokenizer, 8, 2)
    with pytest.raises(ValueError, match="yields 0 block"):
        lm_dataset([], tokenizer, 8, 2)


def test_a_directory_is_an_error_that_suggests_a_glob(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("some text " * 20)
    with pytest.raises(IsADirectoryError, match=r"'.*books' is a directory; .* such as '.*books/\*.txt'"):
        lm_dataset(str(tmp_path / "books"), ByteTokenizer(), 8, 2)
    with pytest.raises(IsADirectoryError, match=r"'.*books' is a directory"):  # matched by a glob
        lm_dataset(str(tmp_path / "*"), ByteTokenizer(), 8, 2)
    # the glob it suggests reads the files: 200 bytes between two EOS, blocks of 8, batches of 2
    got = batches(lm_dataset(str(tmp_path / "books" / "*.txt"), ByteTokenizer(), 8, 2))
    assert len(got) == (200 + 2 - 1) // 8 // 2


def test_invalid_utf8_names_file_and_offset_unless_replaced(tmp_path, monkeypatch):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n" * 3 + b"caf\xe9 au lait\n" + b"more text here\n" * 5)
    with pytest.raises(ValueError, match=r"bad.txt: invalid UTF-8 at byte offset 33"):
        lm_dataset(str(path), ByteTokenizer(), 4, 2)
    # the same offset when the file is read in chunks that cut characters apart
    for chunk in (3, 5, 7, 34):
        monkeypatch.setattr(sources, "_CHUNK", chunk)
        with pytest.raises(ValueError, match=r"bad.txt: invalid UTF-8 at byte offset 33"):
            sources.check_utf8(str(path))
    multibyte = tmp_path / "multibyte.txt"
    multibyte.write_bytes("abcé".encode() + b"\xff" + "héllo".encode())  # é is 2 bytes
    for chunk in (2, 3, 4, 1 << 20):  # 4 cuts é apart, the error follows it in the next chunk
        monkeypatch.setattr(sources, "_CHUNK", chunk)
        with pytest.raises(ValueError, match=r"multibyte.txt: invalid UTF-8 at byte offset 5"):
            sources.check_utf8(str(multibyte))
    ds = lm_dataset(str(path), ByteTokenizer(), 4, 2, errors="replace", shuffle=False)
    tokens = np.concatenate([x.reshape(-1) for x, _ in batches(ds)])
    assert bytes(t for t in tokens if t < 256).find("caf\ufffd".encode()) > 0


def test_checks_against_the_model():
    tokenizer = CharTokenizer.train("abcdefgh")
    model = tiny_gpt(vocab_size=8, max_sequence_length=4)
    with pytest.raises(ValueError, match="seq_len=5 is larger than the model's context of 4"):
        lm_dataset(["abcdefgh" * 4], tokenizer, 5, 1, model=model)
    with pytest.raises(ValueError, match="has 257 tokens but the model's vocabulary has 8"):
        lm_dataset(["abcdefgh" * 4], ByteTokenizer(), 4, 1, model=model)
    ds = lm_dataset(["abcdefgh" * 4], tokenizer, 4, 1, model=model)
    assert len(batches(ds)) == 7


def test_token_id_above_the_vocabulary_is_an_error():
    model = tiny_gpt(vocab_size=100)
    tokenizer = ByteTokenizer()
    tokenizer.vocabulary_size = lambda: 100  # a tokenizer that lies about its size
    with pytest.raises(ValueError, match="the id 256, at or above the model vocabulary size 100"):
        lm_dataset(["abc" * 10], tokenizer, 4, 1, model=model)


def test_bad_arguments_are_errors():
    tokenizer = ByteTokenizer()
    with pytest.raises(ValueError, match="needs a validation_split"):
        lm_dataset(DOCUMENTS, tokenizer, 4, 1, subset="validation")
    with pytest.raises(ValueError, match="Unknown subset"):
        lm_dataset(DOCUMENTS, tokenizer, 4, 1, subset="test")
    with pytest.raises(ValueError, match="Unknown errors='ignore'"):
        lm_dataset(DOCUMENTS, tokenizer, 4, 1, errors="ignore")
    with pytest.raises(TypeError, match="A source is a path"):
        lm_dataset(42, tokenizer, 4, 1)


def test_mlm_masks_fifteen_percent_eighty_ten_ten():
    lines = tiny_shakespeare().read_text().split("\n")[:4000]
    tokenizer = WordPieceTokenizer.train(lines, vocabulary_size=600)
    ds = mlm_dataset(lines, tokenizer, seq_len=64, batch_size=32, max_predictions=20, seed=3)
    selected = masked = kept = 0
    for inputs, labels, weights in ds.take(8):
        ids, positions = inputs["token_ids"].numpy(), inputs["mask_positions"].numpy()
        labels, weights = labels.numpy(), weights.numpy()
        assert (ids[:, 0] == tokenizer.bos_token_id).all() and (ids[:, -1] == tokenizer.eos_token_id).all()
        real = weights > 0
        chosen = np.take_along_axis(ids, positions, axis=1)[real]
        selected += real.sum()
        masked += (chosen == tokenizer.mask_token_id).sum()
        kept += (chosen == labels[real]).sum()
        assert not np.isin(positions[real], [0, 63]).any()  # [CLS] and [SEP] never chosen
    assert 0.12 < selected / (8 * 32 * 62) < 0.17
    assert 0.74 < masked / selected < 0.86
    assert 0.05 < kept / selected < 0.16


def test_mlm_needs_special_tokens():
    with pytest.raises(ValueError, match="needs a tokenizer with a bos_token"):
        mlm_dataset(DOCUMENTS, CharTokenizer.train("abc"), 8, 2)


def test_a_repeated_stream_starts_at_any_batch_with_a_new_order_each_epoch():
    tokenizer = ByteTokenizer()
    docs = [" ".join(f"{i:07d}" for i in range(500))]  # every block different
    blocks_per_epoch = len(batches(lm_dataset(docs, tokenizer, 8, 1, shuffle=False)))
    per_epoch = blocks_per_epoch // 4

    def take(start, n):
        ds = lm_dataset(docs, tokenizer, 8, 4, seed=3, repeat=True, start_batch=start)
        return [x for x, _ in batches(ds.take(n))]

    whole = take(0, 2 * per_epoch + 2)
    resumed = take(per_epoch - 1, per_epoch + 3)
    np.testing.assert_array_equal(np.stack(whole[per_epoch - 1 :]), np.stack(resumed))
    first, second = np.concatenate(whole[:per_epoch]), np.concatenate(whole[per_epoch : 2 * per_epoch])
    assert not np.array_equal(first, second)
    assert len(set(map(tuple, first))) == len(first) == len(second) == len(set(map(tuple, second)))
