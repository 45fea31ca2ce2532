import json
import shutil
import warnings

import keras
import numpy as np
import pytest

from tests.helpers import tiny_gpt
from tflm.training import CheckpointManager, Checkpointing, adamw


def small_model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    model = tiny_gpt(dropout=0.1, **overrides)
    model.build((None, 8))
    model.compile(optimizer=adamw(model, 1e-2))
    return model


def data(n=32):
    ids = np.random.default_rng(0).integers(0, 11, (n, 9)).astype("int32")
    return ids[:, :-1], ids[:, 1:]


def fit_with_checkpoints(directory, keep=3, every_n_steps=500, callbacks=()):
    """`small_model()` fitted for one epoch of 8 steps, saving checkpoints into `directory`;
    returns the model and the checkpoints' manager."""
    model = small_model()
    manager = CheckpointManager(directory, keep=keep)
    model.fit(*data(), batch_size=4, epochs=1, verbose=0,
              callbacks=[Checkpointing(manager, every_n_steps=every_n_steps), *callbacks])
    return model, manager


def all_values(model):
    groups = [model.variables, model.optimizer.variables, model.metrics_variables]
    return [keras.ops.convert_to_numpy(v) for group in groups for v in group]


def test_save_and_restore_every_variable_keeping_the_last_k(tmp_path):
    model, manager = fit_with_checkpoints(tmp_path, keep=2, every_n_steps=3)
    x, y = data()
    assert [c.step for c in manager.checkpoints()] == [6, 8]  # saved at 3, 6 and the end
    saved = all_values(model)

    other = small_model(seed=1)
    other.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0)  # builds optimizer and metrics
    checkpoint, arrays, record = manager.latest()
    assert checkpoint.step == 8 and record["step"] == 8
    from tflm.training.checkpoints import assign

    assign(other, arrays, record)
    for a, b in zip(saved, all_values(other), strict=True):
        np.testing.assert_array_equal(a, b)
    # the dropout seed state is part of it
    assert any("seed_generator" in path for path, _ in record["variables"]["model"])


def test_a_resumed_fit_continues_as_an_uninterrupted_one(tmp_path):
    x, y = data()
    whole = small_model()
    whole.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)

    first = small_model()
    first.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[Checkpointing(CheckpointManager(tmp_path))])
    resumed = small_model(seed=5)  # other initial weights: all must come from the checkpoint
    resumed.fit(x, y, batch_size=4, epochs=2, initial_epoch=1, shuffle=False, verbose=0,
                callbacks=[Checkpointing(CheckpointManager(tmp_path))])
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    _, manager = fit_with_checkpoints(tmp_path, every_n_steps=4)
    newest = manager.checkpoints()[-1].path
    with open(newest / "variables.npz", "r+b") as f:  # flip bytes in the middle
        f.seek(200)
        f.write(b"\xff" * 16)
    with pytest.warns(UserWarning, match="ckpt-000000008 is damaged .*checksum.*previous one"):
        checkpoint, _, _ = manager.latest()
    assert checkpoint.step == 4
    (manager.checkpoints()[0].path / "state.json").unlink()  # and a half-deleted one
    with pytest.warns(UserWarning, match="ckpt-000000004 is damaged"):
        assert manager.latest() is None


def test_an_unfinished_write_is_not_a_checkpoint(tmp_path):
    (tmp_path / ".tmp-ckpt-000000009-123").mkdir()
    (tmp_path / ".tmp-ckpt-000000009-123" / "variables.npz").write_bytes(b"partial")
    manager = CheckpointManager(tmp_path)
    assert manager.checkpoints() == [] and manager.latest() is None


def test_a_second_trainer_on_the_directory_fails_at_once(tmp_path):
    first = CheckpointManager(tmp_path)
    first.lock()
    with pytest.raises(RuntimeError, match=r"in use by another trainer \(pid \d+\)"):
        CheckpointManager(tmp_path).lock()
    first.unlock()
    CheckpointManager(tmp_path).lock()


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    class PoisonAtStep5(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 4:
                self.model.layers[-1].variables[0].assign(
                    np.full(self.model.layers[-1].variables[0].shape, np.nan, "float32"))

    with pytest.raises(FloatingPointError, match="loss became nan at step 5.*ckpt-000000004"):
        fit_with_checkpoints(tmp_path, every_n_steps=2, callbacks=[PoisonAtStep5()])
    manager = CheckpointManager(tmp_path)
    assert [c.step for c in manager.checkpoints()] == [2, 4]
    _, arrays, _ = manager.latest()
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
    CheckpointManager(tmp_path).lock()  # released


def test_a_checkpoint_of_another_model_is_an_error_naming_the_variable(tmp_path):
    _, manager = fit_with_checkpoints(tmp_path)
    wider = small_model(hidden_dim=16)
    with pytest.raises(ValueError, match="has shape .* but the model's .* has shape"):
        wider.fit(*data(), batch_size=4, epochs=1, verbose=0, callbacks=[Checkpointing(manager)])
    assert json.loads((manager.checkpoints()[-1].path / "state.json").read_text())["step"] == 8


def test_stray_entries_are_skipped_with_a_warning(tmp_path):
    _, manager = fit_with_checkpoints(tmp_path, every_n_steps=4)
    shutil.copytree(tmp_path / "ckpt-000000004", tmp_path / "ckpt-000000004.bak")
    (tmp_path / "notes.txt").write_text("a stray file")
    manager = CheckpointManager(tmp_path, keep=2)
    with pytest.warns(UserWarning) as caught:
        checkpoint, _, _ = manager.latest()
    assert checkpoint.step == 8
    assert sorted(str(w.message).split(":")[0] for w in caught) == [
        f"Skipping {tmp_path / 'ckpt-000000004.bak'}", f"Skipping {tmp_path / 'notes.txt'}"]
    # saving (which drops the oldest checkpoint) works too, and warns no more
    model = small_model()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Skipping")
        model.fit(*data(), batch_size=4, epochs=2, initial_epoch=1, verbose=0,
                  callbacks=[Checkpointing(manager, every_n_steps=4)])
    assert [c.step for c in manager.checkpoints()] == [12, 16]
    assert (tmp_path / "ckpt-000000004.bak").is_dir()  # not ours to delete


def test_taking_the_lock_cleans_up_after_a_trainer_that_died_while_writing(tmp_path):
    fit_with_checkpoints(tmp_path, every_n_steps=4)
    unfinished = tmp_path / ".tmp-ckpt-000000012-4242"
    unfinished.mkdir()
    (unfinished / "variables.npz").write_bytes(b"partial")
    # died while rewriting step 8: moved aside, its rewrite not yet in place
    (tmp_path / "ckpt-000000008").rename(tmp_path / ".old-ckpt-000000008-4242")
    (tmp_path / ".tmp-ckpt-000000008-4242").mkdir()
    manager = CheckpointManager(tmp_path)
    with pytest.warns(UserWarning) as caught:
        manager.lock()
    messages = sorted(str(w.message) for w in caught)
    assert messages[0].startswith(f"Removed {tmp_path / '.tmp-ckpt-000000008-4242'}")
    assert messages[1].startswith(f"Removed {unfinished}")
    assert messages[2].startswith(f"Restored {tmp_path / 'ckpt-000000008'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "ckpt-000000004", "ckpt-000000008"]
    assert manager.latest()[0].step == 8
    manager.unlock()


def test_a_failed_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    model = small_model()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        CheckpointManager(tmp_path).save(model, 3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_a_saved_tokenizer_loads_back_the_same(kind, tmp_path):
    from tflm.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer
    from tflm.training.checkpoints import load_tokenizer, save_tokenizer

    text = "the quick brown fox jumps over the lazy dog; the dog sleeps"
    tokenizer = {"char": lambda: CharTokenizer.train(text), "byte": ByteTokenizer,
                 "bpe": lambda: BPETokenizer.train(text, 270)}[kind]()
    save_tokenizer(tokenizer, tmp_path / "tokenizer")
    save_tokenizer(tokenizer, tmp_path / "tokenizer")  # replaces what was there
    loaded = load_tokenizer(tmp_path / "tokenizer")
    assert type(loaded) is type(tokenizer)
    assert loaded.get_vocabulary() == tokenizer.get_vocabulary()
    np.testing.assert_array_equal(loaded("the lazy fox"), tokenizer("the lazy fox"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


def test_a_resume_is_announced_and_a_rebuilt_model_resumes(tmp_path, capsys):
    x, y = data()
    checkpointing = Checkpointing(CheckpointManager(tmp_path), every_n_steps=5)
    model = small_model()
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[checkpointing])
    assert "Resuming" not in capsys.readouterr().out  # nothing to resume from
    # the same model fitted again continues as it is, with nothing to announce
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[checkpointing])
    assert "Resuming" not in capsys.readouterr().out
    trained = model.get_weights()
    # a notebook cell run again: a model built afresh, the same callback and directory; its
    # one epoch is done, so fit has nothing left to train
    again = small_model(seed=3)
    again.fit(x[:4], y[:4], batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[checkpointing])
    assert capsys.readouterr().out == (f"Resuming from checkpoint at step 24 (epoch 1) in {tmp_path}"
                                       "; nothing is left to train (epochs=1).\n")
    assert int(again.optimizer.iterations.numpy()) == 24
    for a, b in zip(trained, again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # the next fit of that model trains again (Keras would keep the resumed initial epoch)
    again.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0, callbacks=[checkpointing])
    assert int(again.optimizer.iterations.numpy()) == 25
    # a new callback on the directory, at the end of an epoch ("epoch": after validation)
    third = small_model(seed=4)
    history = third.fit(x[:4], y[:4], batch_size=4, epochs=2, verbose=0,
                        callbacks=[Checkpointing(CheckpointManager(tmp_path), every_n_steps="epoch")])
    assert capsys.readouterr().out == (f"Resuming from checkpoint at step 25 (epoch 1) in {tmp_path}"
                                       "; fit continues with epoch 2.\n")
    assert len(history.history["loss"]) == 1 and int(third.optimizer.iterations.numpy()) == 26
    quiet = small_model(seed=5)
    quiet.fit(x[:4], y[:4], batch_size=4, epochs=3, verbose=0,
              callbacks=[Checkpointing(CheckpointManager(tmp_path), print_fn=None)])
    assert capsys.readouterr().out == ""


class StopAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.at = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            self.model.stop_training = True


def test_a_cell_run_again_trains_only_the_epochs_left(tmp_path, capsys):
    """An interrupted `fit(epochs=3)` run again resumes, and repeats only the unfinished epoch."""
    x, y = data()  # 8 steps an epoch
    small_model().fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[
        StopAt(12), Checkpointing(CheckpointManager(tmp_path), every_n_steps=4)])
    assert capsys.readouterr().out == ""
    model = small_model(seed=1)
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
                        callbacks=[Checkpointing(CheckpointManager(tmp_path), every_n_steps=4)])
    assert capsys.readouterr().out == (f"Resuming from checkpoint at step 12 (epoch 2) in {tmp_path}"
                                       "; fit continues with epoch 2.\n")
    assert len(history.history["loss"]) == 2  # epochs 2 and 3
    assert int(model.optimizer.iterations.numpy()) == 12 + 2 * 8
