"""`train(config)`: a whole training run from a configuration, as `tflm train` runs it.

It wires the pieces a notebook can also use one by one: `distribution_strategy`,
`lm_dataset`, `adamw` or `TimeBudget`, `model.compile` / `model.fit`, `Checkpointing`,
`ProgressLogs`, `TensorBoard` and `TextSamples`. Each Keras "epoch" is one interval
between validations (`train.eval_every` steps) of an endless stream of batches, and
batch `b` of the stream is always the same, so a run that finds a checkpoint in its
output directory resumes at the exact step it stopped at.
"""

import math
import os
import time
from pathlib import Path

import keras

from tflm.data import corpora, lm_dataset
from tflm.data.sources import resolve_files
from tflm.models import GPT
from tflm.training.callbacks import (
    ProgressLogs,
    TensorBoard,
    TextSamples,
    TimeBudget,
    optimizer_step,
)
from tflm.training.checkpoints import CheckpointManager, Checkpointing
from tflm.training.config import save_config
from tflm.training.distribute import distribution_strategy, is_chief, is_multi_worker
from tflm.training.optimizers import adamw


class TrainResult:
    """What a run did: the model, its last validation loss, the step it ended at and
    whether SIGTERM stopped it."""

    def __init__(self, model, step, val_loss, interrupted, history):
        self.model, self.step, self.val_loss = model, step, val_loss
        self.interrupted, self.history = interrupted, history


def train(config, start=None, print_fn=print):
    """Train the GPT that `config` (see configs/shakespeare-char.yaml) describes.

    Writes into `output.dir`: checkpoints/ (resumed from when present), logs/
    (TensorBoard), config.yaml (the configuration resolved) and, at the end,
    model.keras. `start` is when the run began (time.time()), for `train.max_minutes`.
    """
    start = time.time() if start is None else start
    output = Path(config["output"]["dir"])
    manager = CheckpointManager(output / "checkpoints", config["output"]["keep_checkpoints"])
    chief = is_chief()
    if chief:
        manager.lock()  # before anything else: a second trainer fails at once
    policy = keras.config.dtype_policy()
    try:
        if config["train"]["mixed_precision"]:
            keras.config.set_dtype_policy(config["train"]["mixed_precision"])
        return _train(config, start, print_fn, output, manager, chief)
    finally:
        keras.config.set_dtype_policy(policy)
        manager.unlock()


def _train(config, start, print_fn, output, manager, chief):
    settings, data = config["train"], config["data"]
    latest = manager.latest()
    step = 0 if latest is None else latest[0].step
    if chief:
        save_config(config, output / "config.yaml")
    keras.utils.set_random_seed(settings["seed"])

    strategy = distribution_strategy()
    with strategy.scope():
        model = build_model(config)
    source = _source(data["train"])
    options = dict(seed=data["seed"], errors=data["errors"], model=model, repeat=True,
                   start_batch=step)
    args = (source, model.tokenizer, data["seq_len"], data["batch_size"])
    if data["validation_split"]:
        train_data, validation_data = lm_dataset(
            *args, validation_split=data["validation_split"], subset="both", **options)
    else:
        train_data, validation_data = lm_dataset(*args, **options), None

    multi_worker = is_multi_worker()
    if multi_worker and settings["max_minutes"]:
        raise ValueError("train.max_minutes cannot be used with several workers: their clocks "
                         "would stop them at different steps. Set train.max_steps instead.")
    budget = None
    optim = config["optimizer"]
    with strategy.scope():
        if settings["max_minutes"]:
            optimizer = _adamw(model, optim, total_steps=None)  # TimeBudget sets the rate
            budget = TimeBudget(settings["max_minutes"], optim["lr"], optim["min_lr"],
                                optim["warmup_steps"], start=start, clock=time.time)
            if latest is not None and "time_budget" in latest[2]["state"]:
                budget.set_state(latest[2]["state"]["time_budget"])
        else:
            optimizer = _adamw(model, optim, total_steps=settings["max_steps"])
        model.compile(optimizer=optimizer, jit_compile=settings["jit_compile"])

    every = settings["eval_every"]
    continue_epoch = step % every != 0 and not multi_worker
    if continue_epoch:  # metrics are built at the first step; their totals are restored before
        x, y = next(iter(train_data.take(1)))
        model.compute_metrics(x[:1], y[:1], model(x[:1]), sample_weight=None)
    checkpointing = Checkpointing(
        manager, config["output"]["checkpoint_every"], resume_from=latest,
        continue_epoch=continue_epoch, write=chief,
        state=lambda: {"time_budget": budget.get_state()} if budget else {},
    )
    callbacks = [budget] if budget else []
    callbacks.append(ProgressLogs(data["seq_len"] * data["batch_size"]))
    if chief:
        callbacks.append(TensorBoard(output / "logs", config["output"]["log_every"]))
        if config["output"]["sample_every"] and config["output"]["sample_prompt"]:
            callbacks.append(TextSamples(
                config["output"]["sample_prompt"], config["output"]["sample_every"],
                config["output"]["sample_tokens"], log_dir=output / "logs",
            ))
    callbacks.append(checkpointing)  # last: a step's logs are written before its checkpoint
    if multi_worker:
        from tflm.training.multi_worker import fit_multi_worker as fit
    else:
        fit = _fit

    epochs = math.ceil(settings["max_steps"] / every)
    if step >= epochs * every:
        print_fn(f"{output} already holds a run trained to step {step}: raise train.max_steps "
                 "to train further, or choose another output.dir.")
        return TrainResult(model, step, None, False, None)
    if latest is not None:
        print_fn(f"Resuming from {latest[0].path} (step {step}).")
    history = fit(model, train_data, validation_data, settings["eval_batches"], callbacks,
                  step, every, epochs, settings["verbose"])
    final_step = optimizer_step(model)
    if checkpointing.interrupted:
        print_fn(f"Stopped by SIGTERM at step {final_step}; the checkpoint is in "
                 f"{manager.directory}. Run the same command to resume.")
        return TrainResult(model, final_step, None, True, history)

    val_loss = (history.history.get("val_loss") or [None])[-1] if history else None
    if chief:
        _save_atomically(model, output / "model.keras")
    elapsed = time.time() - start
    summary = f"Trained to step {final_step} in {elapsed:.0f} s"
    if val_loss is not None:
        summary += f"; validation loss {val_loss:.4f} (perplexity {math.exp(val_loss):.2f})"
    print_fn(f"{summary}." + (f" Saved {output / 'model.keras'}." if chief else ""))
    if config["output"]["sample_prompt"] and model.tokenizer is not None:
        prompt = config["output"]["sample_prompt"]
        text = model.generate(prompt, config["output"]["sample_tokens"], sampler="top_k", k=10,
                              seed=settings["seed"])
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


def build_model(config):
    """The GPT of `config["model"]`, with its tokenizer: loaded from `model.init_from`, or
    built fresh with a tokenizer made as `config["tokenizer"]` says."""
    settings = dict(config["model"])
    init_from = settings.pop("init_from")
    if init_from:
        import tflm.tokenizers  # noqa: F401  (registers the tokenizer classes for loading)

        model = keras.saving.load_model(init_from, compile=False)
    else:
        tokenizer = build_tokenizer(config["tokenizer"], config["data"]["train"])
        model = GPT(vocab_size=tokenizer.vocabulary_size(), tokenizer=tokenizer, **settings)
    if not model.built:
        model.build((None, config["data"]["seq_len"]))
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


def _adamw(model, settings, total_steps):
    return adamw(
        model, settings["lr"], total_steps=total_steps, warmup_steps=settings["warmup_steps"],
        min_learning_rate=settings["min_lr"], weight_decay=settings["weight_decay"],
        decay_norms_and_biases=settings["decay_norms_and_biases"], beta_1=settings["beta_1"],
        beta_2=settings["beta_2"], epsilon=settings["epsilon"],
        global_clipnorm=settings["global_clipnorm"],
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
    )


def _save_atomically(model, path):
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save(temporary)
    os.replace(temporary, path)
