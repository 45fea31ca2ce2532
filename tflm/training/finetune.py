"""`finetune()`: a text classifier on a pretrained encoder, as `tflm finetune` runs it.

The encoder comes from a handle (`tflm.hub`): hf://owner/name, a Hugging Face directory, a
tflm preset directory or a `.keras` file; a `Classifier` head goes on top; training uses
AdamW with warmup then linear decay (and optional layer-wise learning-rate decay), training batches of texts of
similar length padded to their own longest (rounded up to 16 tokens), validation every
`eval_every` steps, and early stopping on validation accuracy that keeps the best weights.

A run writes TensorBoard logs (`log_dir`: loss, accuracy and learning rate at the
optimizer's step, the validation curves, the final confusion matrix) and a checkpoint at
each validation (`checkpoint_dir`); run again, it resumes exactly where it stopped, as
`tflm train` does (`Checkpointing`).
"""

import math
import random
from pathlib import Path

import keras
import numpy as np

from tflm.data.classification import classification_dataset, read_labelled
from tflm.models import Classifier, Encoder
from tflm.training.callbacks import ProgressLogs, TensorBoard, optimizer_step
from tflm.training.checkpoints import CheckpointManager, Checkpointing, assign, fingerprint
from tflm.training.config import changes
from tflm.training.optimizers import WarmupLinear, adamw, layer_decay_factors

BEST_WEIGHTS = "best.weights.npz"


def load_encoder(pretrained):
    """An Encoder with its tokenizer from a handle (`tflm.hub`): hf://owner/name, a Hugging
    Face directory, a tflm preset directory or a `.keras` file (a task model's encoder too)."""
    from tflm import hub

    model = hub.load(pretrained, pretrained=True)
    encoder = getattr(model, "encoder", model)  # a Classifier's or MaskedLM's encoder
    if not isinstance(encoder, Encoder) or encoder.tokenizer is None:
        raise ValueError(f"{pretrained} is not an encoder with a tokenizer.")
    return encoder


def finetune(pretrained, train, valid=None, output="classifier.keras", text_column="text",
             label_column="label", validation_split=0.1, seq_len=128, batch_size=32,
             learning_rate=1e-4, warmup=0.06, epochs=1, layer_decay=None, pooling="mean",
             dropout=0.1, eval_every=200, patience=3, seed=0, verbose=1, log_dir=None,
             checkpoint_dir=None, log_every=10, keep_checkpoints=2, callbacks=(),
             print_fn=print):
    """Fine-tune `pretrained` on the labelled file `train`; returns the Classifier (also
    saved to `output`). Without `valid`, `validation_split` of the rows are held out.

    TensorBoard logs go to `log_dir` (default: beside `output`, `classifier-logs/` for
    `classifier.keras`), checkpoints to `checkpoint_dir` (default `classifier-checkpoints/`).
    When `checkpoint_dir` holds checkpoints of the same run (the same arguments and files,
    apart from `output`, `verbose`, the directories and `log_every`), training resumes from
    the newest; of another run, it is an error listing what differs. `callbacks` are added
    to `fit`'s; `print_fn` gets the messages (None: silent).

    ```python
    classifier = finetune("hf://sentence-transformers/all-MiniLM-L6-v2", "train.tsv",
                          output="sst2.keras", epochs=2)  # logs in sst2-logs/
    ```
    """
    arguments = dict(locals())  # before any other name is bound
    say = print_fn or (lambda *args: None)
    stem = str(output)[: -len(".keras")] if str(output).endswith(".keras") else str(output)
    log_dir = Path(f"{stem}-logs" if log_dir is None else log_dir)
    manager = CheckpointManager(f"{stem}-checkpoints" if checkpoint_dir is None else checkpoint_dir,
                                keep_checkpoints, others=[BEST_WEIGHTS])
    try:
        texts, labels = read_labelled(train, text_column, label_column)  # errors name the file
        keras.utils.set_random_seed(seed)
        encoder = load_encoder(pretrained)
        if valid is None:
            order = list(range(len(texts)))
            random.Random(seed).shuffle(order)
            held = set(order[: max(1, int(len(texts) * validation_split))])
            valid = ([t for i, t in enumerate(texts) if i in held], [l for i, l in enumerate(labels) if i in held])
            texts = [t for i, t in enumerate(texts) if i not in held]
            labels = [l for i, l in enumerate(labels) if i not in held]
        else:
            valid = read_labelled(valid, text_column, label_column)
        record = {"pretrained": str(pretrained), "train": fingerprint(train),
                  "valid": None if arguments["valid"] is None else fingerprint(arguments["valid"]),
                  **{name: arguments[name] for name in RUN_ARGUMENTS}}
        manager.lock()  # a second run on the same directory fails here, before training
        latest = manager.latest()
        if latest is not None:
            differences = changes(latest[2]["state"].get("run", {}), record)
            if differences:
                raise ValueError(
                    f"{manager.directory} holds checkpoints of a fine-tuning with other "
                    "settings:\n  " + "\n  ".join(differences) + "\nChoose another output "
                    "(or checkpoint directory), or delete that one to start afresh.")

        options = dict(seq_len=min(seq_len, encoder.max_sequence_length), batch_size=batch_size,
                       pad_to_multiple_of=16)  # short texts stay short; XLA compiles few shapes

        def train_stream(start):
            """The endless stream of training batches from batch `start` on. A dataset made
            afresh: a seeded shuffle reshuffles at each new iterator of the same dataset, so
            only a dataset's first iterator gives the same batches in every process."""
            data = classification_dataset((texts, labels), encoder.tokenizer, seed=seed,
                                          bucket_by_length=True, **options)
            return data.repeat().skip(start), data.label_names

        label_names = train_stream(0)[1]
        valid_data = classification_dataset(valid, encoder.tokenizer, shuffle=False,
                                            label_names=label_names, **options)

        model = Classifier(encoder, len(label_names), pooling=pooling, dropout=dropout,
                           label_names=label_names)  # the encoder's tokenizer
        model.build({"token_ids": (None, None), "padding_mask": (None, None)})
        steps_per_epoch = math.ceil(len(texts) / batch_size)
        total = steps_per_epoch * epochs
        optimizer = adamw(  # Keras' defaults for beta_2 and epsilon, BERT's weight decay
            model, WarmupLinear(learning_rate, total, int(total * warmup)), weight_decay=0.01,
            beta_2=0.999, epsilon=1e-7, global_clipnorm=1.0,
            layer_decay_factors=layer_decay_factors(encoder, layer_decay) if layer_decay else None,
        )
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
                      jit_compile=True)

        every = min(eval_every, total)
        validations = math.ceil(total / every)  # each validation ends a Keras "epoch"
        step = 0 if latest is None else latest[0].step
        best = BestWeights(manager.directory / BEST_WEIGHTS, "val_accuracy", patience)
        if latest is not None:
            best.set_state(latest[2]["state"].get("best", {}))
        checkpointing = Checkpointing(
            manager, "epoch", resume_from=latest, continue_epoch=step % every != 0,
            state=lambda: {"run": record, "best": best.get_state()}, print_fn=print_fn)
        if best.stopped or step >= validations * every:
            say(f"{manager.directory} holds a finished fine-tuning (step {step}); delete it or "
                "choose another output to fine-tune again.")
            assign(model, *latest[1:], groups=("model", "optimizer"))
        else:
            callbacks = [ProgressLogs(), TensorBoard(log_dir, log_every), best, *callbacks,
                         checkpointing]  # last: a step's logs are written before its checkpoint
            fit = dict(validation_data=valid_data, callbacks=callbacks, verbose=verbose)
            epoch, done = divmod(step, every)
            if done:  # first the rest of the validation interval it stopped in
                model.fit(train_stream(step)[0], initial_epoch=epoch, epochs=epoch + 1,
                          steps_per_epoch=every - done, **fit)
                epoch += 1
            if epoch < validations and not model.stop_training:
                model.fit(train_stream(epoch * every)[0], initial_epoch=epoch,
                          epochs=validations, steps_per_epoch=every, **fit)
            if checkpointing.interrupted:
                say(f"Stopped by SIGTERM at step {optimizer_step(model)}; the checkpoint is in "
                    f"{manager.directory}. Run the same command to resume.")
                return model
        best.restore(model)
        model.save(output)
        say(f"Saved {output}.")
        matrix = confusion_matrix(model, valid_data)
        say(format_confusion_matrix(matrix, model.label_names))
        write_confusion_matrix(matrix, log_dir / "validation", optimizer_step(model))
        return model
    finally:
        manager.unlock()


# What a resumed run must share with the checkpoint's (with the files' fingerprints).
RUN_ARGUMENTS = ("text_column", "label_column", "validation_split", "seq_len", "batch_size",
                 "learning_rate", "warmup", "epochs", "layer_decay", "pooling", "dropout",
                 "eval_every", "patience", "seed")


class BestWeights(keras.callbacks.Callback):
    """Early stopping on `monitor` (higher is better) whose best weights are a file: stops
    after `patience` validations without a better value, and `restore` puts the best
    weights back. Its state goes into the run's checkpoints (`get_state`, `set_state`), so
    a resumed run stops and restores as the uninterrupted one would."""

    def __init__(self, path, monitor="val_accuracy", patience=3):
        super().__init__()
        self.path, self.monitor, self.patience = Path(path), monitor, patience
        self.best, self.wait, self.stopped = None, 0, False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if self.best is None or value > self.best:
            self.best, self.wait = float(value), 0
            temporary = self.path.with_name(f".tmp-{self.path.name}")
            with open(temporary, "wb") as f:
                np.savez(f, *self.model.get_weights())
            temporary.replace(self.path)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped = self.model.stop_training = True

    def restore(self, model):
        if self.best is not None:
            with np.load(self.path) as f:
                model.set_weights([f[f"arr_{i}"] for i in range(len(f.files))])

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "stopped": self.stopped}

    def set_state(self, state):
        self.best = state.get("best")
        self.wait = state.get("wait", 0)
        self.stopped = state.get("stopped", False)


def confusion_matrix(model, data):
    """counts[true, predicted] of `model`'s predictions on the labelled batches `data`."""
    counts = np.zeros((model.num_classes,) * 2, "int64")
    for inputs, labels in data:
        predicted = np.argmax(keras.ops.convert_to_numpy(model(inputs, training=False)), -1)
        np.add.at(counts, (np.asarray(labels), predicted), 1)
    return counts


def format_confusion_matrix(counts, label_names):
    """The matrix as text: a row per true label, a column per predicted one."""
    names = [str(name) for name in label_names]
    width = max(len(str(counts.max())), *map(len, names)) + 2
    lines = [f"Confusion matrix on the validation set ({counts.sum()} texts, accuracy "
             f"{np.trace(counts) / max(counts.sum(), 1):.4f}); rows: true label, columns: "
             "predicted",
             " " * width + "".join(name.rjust(width) for name in names)]
    for name, row in zip(names, counts):
        lines.append(name.rjust(width) + "".join(str(n).rjust(width) for n in row))
    return "\n".join(lines)


def confusion_image(counts, cell=32):
    """The matrix as an RGB heat map (H, W, 3) uint8: a square per cell, white (none of the
    true label's texts) to dark blue (all of them), grey lines between cells."""
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    white, blue = np.array([255, 255, 255]), np.array([8, 48, 107])
    colors = white + fractions[..., None] * (blue - white)  # (N, N, 3)
    image = np.repeat(np.repeat(colors, cell, 0), cell, 1)
    image[::cell, :] = image[:, ::cell] = 160
    return image.round().astype("uint8")


def write_confusion_matrix(counts, log_dir, step):
    """The heat map as the image `confusion_matrix` in TensorBoard (the Images tab)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        tf.summary.image("confusion_matrix", confusion_image(counts)[None], step=step)
    writer.close()
