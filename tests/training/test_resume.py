"""`tflm train` on an output.dir that holds checkpoints resumes only what it can continue
exactly: other settings or other data stop it before it writes anything."""

import shutil
from pathlib import Path

import keras
import pytest

# 10 steps on a corpus file of the run's own, both named relative to the run's folder so
# that a copy of the folder resumes with the same settings.
RUN = ("data.train=corpus.txt", "train.max_steps=10", "train.eval_every=5",
       "output.checkpoint_every=5", "output.sample_prompt=")
OUTPUT = "run"


@pytest.fixture(scope="module")
def trained(tflm_train, tmp_path_factory):
    """A folder with corpus.txt and run/, a run trained to step 10 on it."""
    from tflm.data.corpora import tiny_shakespeare

    folder = tmp_path_factory.mktemp("trained")
    text = tiny_shakespeare().read_text()[:40_000]
    assert "q" in text and "z" in text
    (folder / "corpus.txt").write_text(text)
    result = tflm_train.run(OUTPUT, *RUN, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "Trained to step 10" in result.stdout
    return folder


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of the trained folder, for a test to resume and change."""
    return shutil.copytree(trained, tmp_path / "copy")


def checkpoint_names(folder):
    return sorted(p.name for p in (folder / OUTPUT / "checkpoints").iterdir())


def load_model(path):
    import tflm.tokenizers  # noqa: F401  (registers the tokenizer classes)

    return keras.saving.load_model(path, compile=False)


def test_other_settings_stop_the_resume_listing_them_and_writing_nothing(tflm_train, copy):
    config = (copy / OUTPUT / "config.yaml").read_text()
    names = checkpoint_names(copy)
    result = tflm_train.run(OUTPUT, *RUN, "train.max_steps=20", "data.seq_len=16",
                            "data.batch_size=8", "data.seed=1", "model.num_heads=2", cwd=copy)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    for change in ("data.seq_len: 32 -> 16", "data.batch_size: 32 -> 8", "data.seed: 0 -> 1",
                   "model.num_heads: 4 -> 2"):
        assert change in result.stderr
    assert "max_steps" not in result.stderr  # free to change
    assert "another output.dir" in result.stderr and "--set train.resume=force" in result.stderr
    assert (copy / OUTPUT / "config.yaml").read_text() == config
    assert checkpoint_names(copy) == names


def test_a_changed_training_file_stops_the_resume(tflm_train, copy):
    config = (copy / OUTPUT / "config.yaml").read_text()
    corpus = copy / "corpus.txt"
    corpus.write_text(corpus.read_text().replace("q", "z"))  # the same size, other text
    result = tflm_train.run(OUTPUT, *RUN, "train.max_steps=20", cwd=copy)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = next(line for line in result.stderr.splitlines() if "data.files[0]:" in line)
    before, after = line.split("data.files[0]: ")[1].split(" -> ")
    assert before.startswith("40000 bytes, sha256 ") and after.startswith("40000 bytes, sha256 ")
    assert before != after
    assert (copy / OUTPUT / "config.yaml").read_text() == config


def test_force_continues_with_the_runs_own_tokenizer_and_prints_the_changes(tflm_train, trained,
                                                                           copy):
    corpus = copy / "corpus.txt"
    corpus.write_text(corpus.read_text().replace("q", "z"))  # a character tokenizer trained
    # on this would have one character less, and other ids for every character after q
    result = tflm_train.run(OUTPUT, *RUN, "train.max_steps=20", "train.resume=force", cwd=copy)
    assert result.returncode == 0, result.stderr
    assert "train.resume=force" in result.stdout and "data.files[0]: 40000 bytes" in result.stdout
    assert "Resuming from checkpoint at step 10 (epoch 2) in " in result.stdout
    assert "Trained to step 20" in result.stdout
    first = load_model(trained / OUTPUT / "model.keras").tokenizer
    resumed = load_model(copy / OUTPUT / "model.keras").tokenizer
    assert resumed.get_vocabulary() == first.get_vocabulary() and "q" in resumed.vocabulary
    assert resumed("quiz").numpy().tolist() == first("quiz").numpy().tolist()


def test_changing_only_how_long_and_what_is_logged_resumes(tflm_train, copy):
    result = tflm_train.run(OUTPUT, *RUN, "train.max_steps=15", "train.eval_batches=1",
                            "output.log_every=5", "output.checkpoint_every=3",
                            "output.keep_checkpoints=2", "train.verbose=2", cwd=copy)
    assert result.returncode == 0, result.stderr
    assert "Resuming from checkpoint at step 10 (epoch 2) in " in result.stdout
    assert "Trained to step 15" in result.stdout and "differ" not in result.stdout
    assert "max_steps: 15" in (copy / OUTPUT / "config.yaml").read_text()  # the new settings
    assert checkpoint_names(copy) == [".lock", "ckpt-000000012", "ckpt-000000015"]


def test_stray_checkpoint_entries_are_skipped_and_unfinished_writes_removed(tflm_train, copy):
    checkpoints = copy / OUTPUT / "checkpoints"
    shutil.copytree(checkpoints / "ckpt-000000005", checkpoints / "ckpt-000000002.bak")
    unfinished = checkpoints / ".tmp-ckpt-000000015-99999"  # a write the disk ran out during
    unfinished.mkdir()
    (unfinished / "variables.npz").write_bytes(b"PK\x03\x04 and nothing more")
    result = tflm_train.run(OUTPUT, *RUN, "train.max_steps=20", cwd=copy)
    assert result.returncode == 0, result.stderr
    relative = Path(OUTPUT, "checkpoints")  # as the run names them
    assert f"Skipping {relative / 'ckpt-000000002.bak'}: not a checkpoint" in result.stderr
    assert f"Removed {relative / unfinished.name}" in result.stderr and not unfinished.exists()
    assert "Resuming from checkpoint at step 10 " in result.stdout
    assert "Trained to step 20" in result.stdout
    assert checkpoint_names(copy) == [".lock", "ckpt-000000002.bak", "ckpt-000000010",
                                      "ckpt-000000015", "ckpt-000000020"]


def test_a_checkpoint_without_a_record_or_a_tokenizer_is_refused(tflm_train, copy, monkeypatch):
    """As an earlier tflm left its runs: nothing to check the settings against."""
    import json

    from tflm.training import load_config, train

    state = copy / OUTPUT / "checkpoints" / "ckpt-000000010" / "state.json"
    record = json.loads(state.read_text())
    del record["state"]["run"]
    state.write_text(json.dumps(record))
    shutil.rmtree(copy / OUTPUT / "tokenizer")
    monkeypatch.chdir(copy)
    config = load_config(overrides=tflm_train.overrides(OUTPUT, *RUN, "train.max_steps=20"))
    with pytest.raises(ValueError) as error:
        train(config, print_fn=lambda *_: None)
    assert "(not recorded: the checkpoint was written by an earlier tflm)" in str(error.value)
    assert "tokenizer: saved in run/tokenizer -> none" in str(error.value)
    assert not (copy / OUTPUT / "tokenizer").exists()
