"""`train(config)`: a whole training run from a configuration, as `tflm train` runs it.

It wires the pieces a notebook can also use one by one: `distribution_strategy`,
`lm_dataset`, `adamw` or `TimeBudget`, `model.compile` / `model.fit`, `Checkpointing`,
`ProgressLogs`, `TensorBoard` and `TextSamples`. Each Keras "epoch" is one interval
between validations (`train.eval_every` steps) of an endless stream of batches, and
batch `b` of the stream is always the same, so a run that finds a checkpoint in its
output directory resumes at the exact step it stopped at, with the tokenizer it saved, as
long as nothing the checkpoint depends on has changed (`run_record`).
"""

import math
import os
import time
from pathlib import Path

import keras

from tflm import hub
from tflm.data import corpora, lm_dataset
from tflm.data.sources import resolve_files
from tflm.models import GPT
from tflm.models.base import BLOCKS
from tflm.training.callbacks import (
    ProgressLogs,
    TensorBoard,
    TextSamples,
    TimeBudget,
    optimizer_step,
)
from tflm.training.checkpoints import (
    CheckpointManager,
    Checkpointing,
    fingerprint,
    load_tokenizer,
    save_tokenizer,
)
from tflm.training.config import changes, merge_config, resume_record, save_config
from tflm.training.distribute import distribution_strategy, is_chief, is_multi_worker
from tflm.training.optimizers import adamw

RESUME_MODES = ("auto", "force")


class TrainResult:
    """What a run did: the model, its last validation loss, the step it ended at and
    whether SIGTERM stopped it."""

    def __init__(self, model, step, val_loss, interrupted, history):
        self.model, self.step, self.val_loss = model, step, val_loss
        self.interrupted, self.history = interrupted, history


def train(config, start=None, print_fn=print):
    """Train the GPT that `config` (see configs/shakespeare-char.yaml) describes.

    Writes into `output.dir`: checkpoints/ (resumed from when present), logs/
    (TensorBoard), tokenizer/ (the run's tokenizer, reused on resume), config.yaml (the
    configuration resolved) and, at the end, model.keras. A resume whose settings differ
    from the checkpoint's in what it depends on stops before writing anything, unless
    `train.resume` is "force". `start` is when the run began (time.time()), for
    `train.max_minutes`. A partial `config` is merged over the default (`load_config`).
    """
    config = merge_config(config)
    start = time.time() if start is None else start
    if config["train"]["resume"] not in RESUME_MODES:
        raise ValueError(f"train.resume must be one of {', '.join(RESUME_MODES)}; got "
                         f"{config['train']['resume']!r}.")
    inputs = run_inputs(config)  # a missing file is an error before anything is written
    output = Path(config["output"]["dir"])
    manager = CheckpointManager(output / "checkpoints", config["output"]["keep_checkpoints"])
    chief = is_chief()
    if chief:
        manager.lock()  # before anything else: a second trainer fails at once
    policy = keras.config.dtype_policy()
    try:
        if config["train"]["mixed_precision"]:
            keras.config.set_dtype_policy(config["train"]["mixed_precision"])
        return _train(config, inputs, start, print_fn, output, manager, chief)
    finally:
        keras.config.set_dtype_policy(policy)
        manager.unlock()


def _train(config, inputs, start, print_fn, output, manager, chief):
    settings = config["train"]
    latest = manager.latest()
    step = 0 if latest is None else latest[0].step
    record = run_record(config, inputs)
    tokenizer = None if latest is None else _resumed_tokenizer(config, latest, record, output,
                                                               print_fn)
    if chief:
        save_config(config, output / "config.yaml")
    keras.utils.set_random_seed(settings["seed"])

    strategy = distribution_strategy()
    with strategy.scope():
        model = build_model(config, tokenizer)
    if chief and tokenizer is None and model.tokenizer is not None:
        save_tokenizer(model.tokenizer, output / "tokenizer")
    train_data, validation_data = _datasets(config, model, step)
    with strategy.scope():
        budget = _compile(model, config, start, latest)

    multi_worker = is_multi_worker()
    every = settings["eval_every"]
    checkpointing = Checkpointing(
        manager, config["output"]["checkpoint_every"], resume_from=latest,
        continue_epoch=step % every != 0 and not multi_worker, write=chief, print_fn=print_fn,
        state=lambda: {"run": record, **({"time_budget": budget.get_state()} if budget else {})},
    )
    callbacks = _callbacks(config, output, chief, budget, checkpointing)
    if multi_worker:
        from tflm.training.multi_worker import fit_multi_worker as fit
    else:
        fit = _fit

    epochs = math.ceil(settings["max_steps"] / every)
    if step >= epochs * every:
        print_fn(f"{output} already holds a run trained to step {step}: raise train.max_steps "
                 "to train further, or choose another output.dir.")
        return TrainResult(model, step, None, False, None)
    history = fit(model, train_data, validation_data, settings["eval_batches"], callbacks,
                  step, every, epochs, settings["verbose"])
    if checkpointing.interrupted:
        final_step = optimizer_step(model)
        print_fn(f"Stopped by SIGTERM at step {final_step}; the checkpoint is in "
                 f"{manager.directory}. Run the same command to resume.")
        return TrainResult(model, final_step, None, True, history)
    return _finish(model, history, config, output, chief, start, print_fn)


def run_inputs(config):
    """The files the run reads: data.train's, and the model file or directory that
    model.init_from names (None without one). Raises when one is missing."""
    init_from = config["model"]["init_from"]
    return _files(config["data"]["train"]), hub.locate(init_from, GPT) if init_from else None


def run_record(config, inputs):
    """What a checkpoint's exact resume depends on: every setting a resumed run may not
    change (`config.RESUMABLE_CHANGES` are the others) and a fingerprint of each file
    the run reads (`run_inputs`: the training files, and the model it started from)."""
    record = resume_record(config)
    files, model_path = inputs
    for i, path in enumerate(files):
        record[f"data.files[{i}]"] = fingerprint(path)
    if model_path is not None:
        record["model.init_from (file)"] = _model_fingerprint(model_path)
    return record


def _model_fingerprint(path):
    """The fingerprint of a model file, or of each file of a model directory (an hf://
    handle's is its downloaded snapshot)."""
    if path.is_file():
        return fingerprint(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return "; ".join(f"{p.relative_to(path)}: {fingerprint(p)}" for p in files)


def _resumed_tokenizer(config, latest, record, output, print_fn):
    """The tokenizer saved with the run (None when there is none), once the checkpoint
    `latest` is known to continue exactly with `config`: with other settings, an error
    listing them (a note with train.resume=force)."""
    checkpoint, _, saved = latest
    if "run" in saved["state"]:
        differences = changes(saved["state"]["run"], record)
    else:
        differences = ["(not recorded: the checkpoint was written by an earlier tflm)"]
    directory = output / "tokenizer"
    # a model from model.init_from brings its own tokenizer (its file's fingerprint is checked)
    if not directory.is_dir() and not config["model"]["init_from"]:
        differences.append(f"tokenizer: saved in {directory} -> none (it would be trained "
                           "again from data.train)")
    if differences:
        listed = "\n  ".join(differences)
        if config["train"]["resume"] != "force":
            raise ValueError(
                f"{output} holds checkpoints of a run with other settings; resuming from "
                f"{checkpoint.path.name} (step {checkpoint.step}) would not continue it "
                f"exactly:\n  {listed}\nTo start afresh, train into another output.dir; to "
                "continue from the checkpoint with the new settings, add "
                "--set train.resume=force."
            )
        note = (f"train.resume=force: continuing from {checkpoint.path.name} with settings "
                f"that differ from the run's:\n  {listed}")
        if directory.is_dir():
            note += f"\nThe run's own tokenizer ({directory}) is kept."
        print_fn(note)
    return load_tokenizer(directory) if directory.is_dir() else None


def _datasets(config, model, step):
    """The training stream from batch `step` on, and the validation split (or None)."""
    data = config["data"]
    options = dict(seed=data["seed"], errors=data["errors"], model=model, repeat=True,
                   start_batch=step)
    args = (_source(data["train"]), model.tokenizer, data["seq_len"], data["batch_size"])
    if data["validation_split"]:
        return lm_dataset(*args, validation_split=data["validation_split"], subset="both",
                          **options)
    return lm_dataset(*args, **options), None


def _compile(model, config, start, latest):
    """Compile `model` with AdamW; returns the `TimeBudget` that sets its learning rate
    when `train.max_minutes` is set (None otherwise: a cosine over `train.max_steps`)."""
    settings = config["train"]
    if is_multi_worker() and settings["max_minutes"]:
        raise ValueError("train.max_minutes cannot be used with several workers: their clocks "
                         "would stop them at different steps. Set train.max_steps instead.")
    optimizer_settings = config["optimizer"]
    budget = None
    if settings["max_minutes"]:
        optimizer = adamw(model, total_steps=None, **optimizer_settings)  # TimeBudget sets the rate
        budget = TimeBudget(settings["max_minutes"], optimizer_settings["learning_rate"],
                            optimizer_settings["min_learning_rate"],
                            optimizer_settings["warmup_steps"], start=start, clock=time.time)
        if latest is not None and "time_budget" in latest[2]["state"]:
            budget.set_state(latest[2]["state"]["time_budget"])
    else:
        optimizer = adamw(model, total_steps=settings["max_steps"], **optimizer_settings)
    model.compile(optimizer=optimizer, jit_compile=settings["jit_compile"])
    return budget


def _callbacks(config, output, chief, budget, checkpointing):
    data, settings = config["data"], config["output"]
    callbacks = [budget] if budget else []
    callbacks.append(ProgressLogs(data["seq_len"] * data["batch_size"]))
    if chief:
        callbacks.append(TensorBoard(output / "logs", settings["log_every"]))
        if settings["sample_every"] and settings["sample_prompt"]:
            callbacks.append(TextSamples(settings["sample_prompt"], settings["sample_every"],
                                         settings["sample_tokens"], log_dir=output / "logs"))
    callbacks.append(checkpointing)  # last: a step's logs are written before its checkpoint
    return callbacks


def _finish(model, history, config, output, chief, start, print_fn):
    """Save the model, print the summary and a sample; the run's `TrainResult`."""
    final_step = optimizer_step(model)
    val_loss = (history.history.get("val_loss") or [None])[-1] if history else None
    if chief:
        _save_atomically(model, output / "model.keras")
    elapsed = time.time() - start
    summary = f"Trained to step {final_step} in {elapsed:.0f} s"
    if val_loss is not None:
        summary += f"; validation loss {val_loss:.4f} (perplexity {math.exp(val_loss):.2f})"
    print_fn(f"{summary}." + (f" Saved {output / 'model.keras'}." if chief else ""))
    prompt = config["output"]["sample_prompt"]
    if prompt and model.tokenizer is not None:
        text = model.generate(prompt, config["output"]["sample_tokens"], sampler="top_k", k=10,
                              seed=config["train"]["seed"])
        print_fn(f"\n{prompt}{text}")
    return TrainResult(model, final_step, val_loss, False, history)


def _fit(model, train_data, validation_data, validation_steps, callbacks, step, every, epochs,
         verbose):
    """`model.fit` from `step`: first the rest of an epoch stopped midway, then whole ones."""
    options = dict(validation_data=validation_data, validation_steps=validation_steps,
                   callbacks=callbacks, verbose=verbose, shuffle=False)
    epoch, done = divmod(step, every)
    history = None
    if done:
        history = model.fit(train_data, initial_epoch=epoch, epochs=epoch + 1,
                            steps_per_epoch=every - done, **options)
        if model.stop_training:
            return history
        train_data, epoch = train_data.skip(every - done), epoch + 1
    if epoch < epochs:
        history = model.fit(train_data, initial_epoch=epoch, epochs=epochs,
                            steps_per_epoch=every, **options)
    return history


def build_model(config, tokenizer=None):
    """The GPT of `config["model"]`, with its tokenizer: loaded from `model.init_from` (a
    handle, `tflm.hub`: a .keras file, a preset or Hugging Face directory, hf://owner/name),
    or built fresh with `tokenizer` (a resumed run's own) or, when None, a tokenizer made as
    `config["tokenizer"]` says."""
    settings = dict(config["model"])
    init_from = settings.pop("init_from")
    lora_rank = settings.pop("lora_rank", None)
    if init_from:
        model = hub.load(init_from, GPT, pretrained=True)
    else:
        if tokenizer is None:
            tokenizer = build_tokenizer(config["tokenizer"], config["data"]["train"])
        # the config spells out every block kind's settings: pass the chosen kind's only
        others = {name for kind, spec in BLOCKS.items() if kind != settings["block"]
                  for name in spec.arguments}
        settings = {k: v for k, v in settings.items() if k not in others}
        model = GPT(vocab_size=tokenizer.vocabulary_size(), tokenizer=tokenizer, **settings)
    if not model.built:
        model.build((None, config["data"]["seq_len"]))
    if lora_rank:
        from tflm.models import enable_lora

        enable_lora(model, lora_rank)  # Keras folds the adapters into the kernels when it saves
    return model


def build_tokenizer(settings, source):
    from tflm import tokenizers

    kind = settings["kind"]
    if kind == "byte":
        return tokenizers.ByteTokenizer()
    if kind not in ("char", "bpe"):
        raise ValueError(f"Unknown tokenizer kind {kind!r}; expected char, byte or bpe.")
    texts = (Path(p).read_text(encoding="utf-8", errors="replace") for p in _files(source))
    if kind == "char":
        return tokenizers.CharTokenizer.train(texts)
    if not settings["vocabulary_size"]:
        raise ValueError("tokenizer.vocabulary_size must be set for a BPE tokenizer.")
    return tokenizers.BPETokenizer.train(list(texts), settings["vocabulary_size"])


def _source(name):
    """A config's data source: the name of an embedded corpus, or a path or glob."""
    corpus = getattr(corpora, str(name), None)
    return str(corpus()) if callable(corpus) else str(name)


def _files(source):
    return resolve_files(_source(source))


def _save_atomically(model, path):
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save(temporary)
    os.replace(temporary, path)
