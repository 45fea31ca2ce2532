"""Checkpoints that resume a run exactly where it stopped.

Keras' `BackupAndRestore` restores the epoch and replays it, with another data order. A
tflm checkpoint holds every variable a training step reads or writes: the model's
weights and random-seed states, the optimizer's slots and step counter, and the running
metric totals; with `lm_dataset(..., repeat=True, start_batch=step)` the data position
is the step itself, so a resumed run computes the same losses as one never interrupted.

Layout of a run's checkpoint directory:

    ckpt-000000250/variables.npz   every variable, in a fixed order
    ckpt-000000250/state.json      step, variable names and shapes, checksum, trainer state
    .lock                          held by the trainer writing here
    .tmp-ckpt-000000260-<pid>/     a checkpoint being written (renamed into place when whole)

Anything else there (a `ckpt-000000250.bak` copy, a stray file) is skipped with a warning;
the temporary folders of a trainer that died while writing are removed by the next one to
take the lock.

The checkpoints are plain numpy arrays, so they work the same on every Keras backend.
"""

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from tflm.training.callbacks import optimizer_step

PREFIX = "ckpt-"
NAME = re.compile(re.escape(PREFIX) + r"(\d+)")
TEMPORARY = (".tmp-", ".old-")  # a checkpoint being written, and one being replaced
GROUPS = ("model", "optimizer", "metrics")


class CorruptCheckpoint(Exception):
    """A checkpoint that cannot be read back as it was written."""


def _variables(model):
    """The variables of each group, in an order that is the same for the same model."""
    from tflm.training.distribute import is_multi_worker

    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return {
        "model": list(model.variables),  # weights and seed-generator states
        "optimizer": [] if optimizer is None else list(optimizer.variables),
        # Reading metric totals across workers is a collective that every worker would
        # have to join, so a multi-worker run keeps only weights and optimizer state.
        "metrics": [] if is_multi_worker() else list(model.metrics_variables),
    }


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path):
    """A file's size and the start of its SHA-256: another content gives another one."""
    return f"{os.path.getsize(path)} bytes, sha256 {_sha256(path)[:16]}"


class Checkpoint:
    """One checkpoint on disk, checked against its checksum when read."""

    def __init__(self, path):
        self.path = Path(path)
        match = NAME.fullmatch(self.path.name)
        if match is None:
            raise ValueError(f"{self.path} is not named as a checkpoint ({PREFIX}<step>).")
        self.step = int(match.group(1))

    def read(self):
        """`(arrays, state)`, or `CorruptCheckpoint` when a file is missing or damaged."""
        try:
            state = json.loads((self.path / "state.json").read_text())
            if _sha256(self.path / "variables.npz") != state["sha256"]:
                raise CorruptCheckpoint("its variables do not match their checksum")
            with np.load(self.path / "variables.npz") as f:
                arrays = {name: f[name] for name in f.files}
        except CorruptCheckpoint:
            raise
        except Exception as error:  # a truncated or half-deleted checkpoint
            raise CorruptCheckpoint(f"{type(error).__name__}: {error}") from error
        return arrays, state

    def __repr__(self):
        return f"Checkpoint({str(self.path)!r})"


class CheckpointManager:
    """The checkpoints of one training run in `directory`.

    Writes are atomic (a temporary folder renamed into place, so a reader never sees a
    half-written checkpoint); only the newest `keep` are kept; `lock()` makes a second
    trainer on the same directory fail at once. `others` names files kept beside the
    checkpoints (such as a run's best weights), which are not warned about.
    """

    def __init__(self, directory, keep=3, others=()):
        if keep < 1:
            raise ValueError(f"keep must be at least 1; got {keep}.")
        self.directory = Path(directory)
        self.keep = keep
        self.others = {".lock", *others}
        self._lock_file = None
        self._reported = set()  # the stray entries already warned about

    # -- the lock ---------------------------------------------------------------------

    def lock(self):
        """Hold the directory for this process until `unlock()` (or the process ends)."""
        if self._lock_file is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.directory / ".lock", "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            owner = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise RuntimeError(
                f"{self.directory} is in use by another trainer (pid {owner}); stop it or "
                "train into another directory."
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        self._lock_file = lock_file
        self._clean_up()

    def _clean_up(self):
        """Remove what a trainer that died while writing left behind. Only the holder of
        the lock writes here, so none of it is still being written."""
        for path in sorted(self.directory.iterdir()):
            if not path.name.startswith(TEMPORARY):
                continue
            original = self.directory / path.name[len(".tmp-"):].rsplit("-", 1)[0]
            if path.name.startswith(".old-") and not original.exists():
                # it died between moving a checkpoint aside and moving its rewrite in
                path.rename(original)
                warnings.warn(f"Restored {original} from {path.name}, left by a trainer that "
                              "stopped while rewriting it.", stacklevel=3)
            else:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                warnings.warn(f"Removed {path}, left by a trainer that stopped while writing "
                              "a checkpoint.", stacklevel=3)

    def unlock(self):
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- reading ----------------------------------------------------------------------

    def checkpoints(self):
        """The complete checkpoints, oldest first.

        Entries that are not checkpoints (a `ckpt-000000250.bak` copy, a stray file) are
        skipped with a warning; unfinished writes (`.tmp-*`) are skipped silently.
        """
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if path.name in self.others or path.name.startswith(TEMPORARY):
                continue
            if NAME.fullmatch(path.name) and path.is_dir():
                found.append(Checkpoint(path))
            elif path.name not in self._reported:
                self._reported.add(path.name)
                warnings.warn(f"Skipping {path}: not a checkpoint (those are folders named "
                              f"{PREFIX}<step>).", stacklevel=2)
        return sorted(found, key=lambda c: c.step)

    def latest(self):
        """`(checkpoint, arrays, state)` of the newest readable checkpoint, or None.

        A damaged newest checkpoint is skipped with a warning for the one before it.
        """
        for checkpoint in reversed(self.checkpoints()):
            try:
                return (checkpoint, *checkpoint.read())
            except CorruptCheckpoint as error:
                warnings.warn(
                    f"Checkpoint {checkpoint.path} is damaged ({error}); falling back to the "
                    "previous one.",
                    stacklevel=2,
                )
        return None

    # -- writing ----------------------------------------------------------------------

    def save(self, model, step, state=None):
        """Write every variable of `model` (with its optimizer and metrics) as step `step`."""
        groups = _variables(model)
        arrays, names = {}, {}
        for group, variables in groups.items():
            names[group] = []
            for i, variable in enumerate(variables):
                arrays[f"{group}/{i:05d}"] = keras.ops.convert_to_numpy(variable.value)
                names[group].append([variable.path, list(variable.shape)])

        final = self.directory / f"{PREFIX}{step:09d}"
        temporary = self.directory / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        try:
            with open(temporary / "variables.npz", "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            record = {"step": step, "sha256": _sha256(temporary / "variables.npz"),
                      "variables": names, "state": state or {}}
            with open(temporary / "state.json", "w") as f:
                json.dump(record, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # a full disk, an interrupt: leave no half-written folder
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        if final.exists():  # the same step written again after a resume
            stale = self.directory / f".old-{final.name}-{os.getpid()}"
            final.rename(stale)
            temporary.rename(final)
            shutil.rmtree(stale)
        else:
            temporary.rename(final)
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old.path, ignore_errors=True)
        return Checkpoint(final)


def assign(model, arrays, state, groups=GROUPS):
    """Set the variables of `groups` of `model` from a checkpoint's arrays.

    A checkpoint of another architecture is an error naming the first variable that
    differs.
    """
    current = _variables(model)
    for group in groups:
        saved = state["variables"][group]
        if len(saved) != len(current[group]):
            raise ValueError(
                f"The checkpoint holds {len(saved)} {group} variables but the model has "
                f"{len(current[group])}: it was written by another configuration."
            )
        for i, (variable, (path, shape)) in enumerate(zip(current[group], saved)):
            if list(variable.shape) != shape:
                raise ValueError(
                    f"The checkpoint's {group} variable {path!r} has shape {tuple(shape)} but "
                    f"the model's {variable.path!r} has shape {tuple(variable.shape)}."
                )
            variable.assign(arrays[f"{group}/{i:05d}"])


class Checkpointing(keras.callbacks.Callback):
    """Save checkpoints during `fit`, resume from one, stop cleanly on SIGTERM.

    Every `every_n_steps` optimizer steps ("epoch": at the end of each epoch, after
    validation and the callbacks listed before this one) and when training ends, all the
    variables are written with `manager`. When training begins, the model and optimizer
    are loaded from `resume_from`: "latest" (the newest readable checkpoint, when it is
    ahead of the model: a model built again in a notebook cell run twice resumes, one that
    `fit` already trained continues as it is), None, or what `manager.latest()` returned
    (loaded once). From "latest", `fit` then runs only the epochs after the last finished
    one, as with Keras' `BackupAndRestore`. A resume is announced with `print_fn`:

        Resuming from checkpoint at step 24 (epoch 3) in runs/x/checkpoints; fit continues with epoch 4.

    ```python
    model.fit(x, y, epochs=3, callbacks=[Checkpointing(CheckpointManager("ckpts"), 100)])
    ```

    A loss that is not finite stops training with `FloatingPointError`; nothing is
    saved after the last finite step, so the newest checkpoint is a good one. SIGTERM
    writes a checkpoint after the current step and stops training (`self.interrupted`).

    Args:
        manager: a `CheckpointManager`; locked for the duration of `fit`.
        continue_epoch: the checkpoint was written in the middle of the epoch that `fit`
            starts with (`fit` then runs only that epoch's remaining steps); its running
            metric totals are put back, so the epoch's means continue where they were.
            The model must be a language model taking token ids (the metrics are built
            on one token before they are put back).
        state: a function returning a JSON-able dict saved with each checkpoint (a
            trainer's own state, such as the time already spent).
        write: False for the workers of a cluster other than the chief: they resume
            from the chief's checkpoints and stop with it, but write nothing.
        print_fn: where the resume message goes (None: nowhere).
    """

    def __init__(self, manager, every_n_steps=500, resume_from="latest", continue_epoch=False,
                 state=None, write=True, print_fn=print):
        super().__init__()
        if every_n_steps != "epoch" and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1; got {every_n_steps}.")
        self.manager = manager
        self.every_n_steps = every_n_steps
        self.resume_from = resume_from
        self.continue_epoch = continue_epoch
        self.state = state or dict
        self.write = write
        self.print_fn = print_fn
        self.interrupted = False
        self._epoch = None
        self._epoch_done = False
        self._sets_initial_epoch = False
        self._pending_metrics = None
        self._terminate = threading.Event()
        self._previous_handler = None
        self._owns_lock = False
        self._last_saved = None

    @property
    def step(self):
        return optimizer_step(self.model)

    def on_train_begin(self, logs=None):
        self._owns_lock = self.write and self.manager._lock_file is None
        if self._owns_lock:
            self.manager.lock()
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._sets_initial_epoch = self.resume_from == "latest"
        if self.resume_from == "latest":
            found = self.manager.checkpoints()
            # a model that fit already trained to the newest checkpoint continues as it is
            latest = self.manager.latest() if found and found[-1].step > self.step else None
        else:
            latest, self.resume_from = self.resume_from, None  # only once
        if latest is not None:
            checkpoint, arrays, record = latest
            assign(self.model, arrays, record, groups=("model", "optimizer"))
            self._last_saved = checkpoint.step
            epoch = record["state"].get("epoch")
            # as Keras' BackupAndRestore: a cell run again trains only the epochs left
            done = (epoch if record["state"].get("epoch_done") else epoch - 1) if epoch else 0
            skips_epochs = self._sets_initial_epoch and done
            if skips_epochs:
                self.model._initial_epoch = done
            if self.print_fn is not None:
                left = ""
                if skips_epochs:
                    epochs = self.params.get("epochs") if self.params else None
                    left = (f"; nothing is left to train (epochs={epochs})" if epochs and done >= epochs
                            else f"; fit continues with epoch {done + 1}")
                self.print_fn(f"Resuming from checkpoint at step {checkpoint.step}"
                              + (f" (epoch {epoch})" if epoch else "")
                              + f" in {self.manager.directory}{left}.")
            if self.continue_epoch:
                self._build_metrics()
                self._pending_metrics = (arrays, record)

    def _build_metrics(self):
        """`fit` builds the compiled metrics at its first step (on the TensorFlow backend),
        after `on_epoch_begin` puts the saved totals back: build them now, on one token.
        `fit` resets them before the epoch begins."""
        if not all(getattr(metric, "built", True) for metric in self.model.metrics):
            ids = keras.ops.zeros((1, 1), "int32")
            self.model.compute_metrics(ids, ids, self.model(ids), sample_weight=None)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1  # as Keras counts them on screen
        self._epoch_done = False
        if self._pending_metrics is not None:  # fit reset the metrics just before this
            assign(self.model, *self._pending_metrics, groups=("metrics",))
            self._pending_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        step = self.step
        steps = (self.params or {}).get("steps")
        self._epoch_done = steps is not None and batch + 1 == steps  # the epoch's last step
        if loss is not None and not math.isfinite(loss):
            self._finish()
            last = self.manager.checkpoints()
            where = (f"the last good checkpoint is {last[-1].path}" if last
                     else "no checkpoint had been written")
            raise FloatingPointError(
                f"The loss became {loss} at step {step}; training stopped and {where}."
            )
        if self._terminate.is_set():
            self.save()
            self.interrupted = True
            self.model.stop_training = True
        elif self.every_n_steps != "epoch" and step % self.every_n_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_done = True
        if self.every_n_steps == "epoch" and not self.interrupted:
            self.save()

    def on_train_end(self, logs=None):
        if self._sets_initial_epoch:
            self.model._initial_epoch = None  # Keras keeps it for every later fit otherwise
        if self.step != self._last_saved and not self.interrupted:
            self.save()
        self._finish()

    def _finish(self):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        if self._owns_lock:
            self.manager.unlock()

    def save(self):
        if self.write:
            state = {"time": time.time(), "epoch": self._epoch, "epoch_done": self._epoch_done,
                     **self.state()}
            self.manager.save(self.model, self.step, state)
        self._last_saved = self.step

    def _on_sigterm(self, signum, frame):
        self._terminate.set()  # acted on after the step that is running


# -- the tokenizer of a run ----------------------------------------------------------------


def save_tokenizer(tokenizer, directory):
    """Write `tokenizer` into `directory` as a `.keras` archive holds a layer: its
    serialized config (config.json; a character vocabulary is part of it) and its asset
    files (assets/: a BPE vocabulary and merges). Replaces what `directory` held."""
    directory = Path(directory)
    temporary = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    config = keras.saving.serialize_keras_object(tokenizer)
    (temporary / "config.json").write_text(json.dumps(config, indent=1))
    if hasattr(tokenizer, "save_assets"):
        (temporary / "assets").mkdir()
        tokenizer.save_assets(str(temporary / "assets"))
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)


def load_tokenizer(directory):
    """The tokenizer `save_tokenizer` wrote into `directory`."""
    import tflm.tokenizers  # noqa: F401  (registers the tokenizer classes)

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    tokenizer = keras.saving.deserialize_keras_object(config)
    if hasattr(tokenizer, "load_assets"):
        tokenizer.load_assets(str(directory / "assets"))
    return tokenizer
