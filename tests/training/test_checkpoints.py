import json

import keras
import numpy as np
import pytest

from tflm.models import GPT
from tflm.training import CheckpointManager, Checkpointing, adamw


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = GPT(11, 1, 2, 8, 16, 8, dropout=0.1)
    model.build((None, 8))
    model.compile(optimizer=adamw(model, 1e-2))
    return model


def data(n=32):
    ids = np.random.default_rng(0).integers(0, 11, (n, 9)).astype("int32")
    return ids[:, :-1], ids[:, 1:]


def all_values(model):
    groups = [model.variables, model.optimizer.variables, model.metrics_variables]
    return [keras.ops.convert_to_numpy(v) for group in groups for v in group]


def test_save_and_restore_every_variable_keeping_the_last_k(tmp_path):
    model = small_model()
    x, y = data()
    manager = CheckpointManager(tmp_path, keep=2)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[Checkpointing(manager, every_n_steps=3)])
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
    model = small_model()
    x, y = data()
    manager = CheckpointManager(tmp_path, keep=3)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[Checkpointing(manager, every_n_steps=4)])
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
    model = small_model()
    x, y = data()
    x = x.copy()
    manager = CheckpointManager(tmp_path)

    class PoisonAtStep5(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 4:
                self.model.layers[-1].variables[0].assign(
                    np.full(self.model.layers[-1].variables[0].shape, np.nan, "float32"))

    with pytest.raises(FloatingPointError, match="loss became nan at step 5.*ckpt-000000004"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                  callbacks=[Checkpointing(manager, every_n_steps=2), PoisonAtStep5()])
    assert [c.step for c in manager.checkpoints()] == [2, 4]
    _, arrays, _ = manager.latest()
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
    CheckpointManager(tmp_path).lock()  # released


def test_a_checkpoint_of_another_model_is_an_error_naming_the_variable(tmp_path):
    model = small_model()
    x, y = data()
    manager = CheckpointManager(tmp_path)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[Checkpointing(manager)])
    keras.utils.set_random_seed(0)
    wider = GPT(11, 1, 2, 16, 16, 8, dropout=0.1)
    wider.build((None, 8))
    wider.compile(optimizer=adamw(wider, 1e-2))
    with pytest.raises(ValueError, match="has shape .* but the model's .* has shape"):
        wider.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[Checkpointing(manager)])
    assert json.loads((manager.checkpoints()[-1].path / "state.json").read_text())["step"] == 8
