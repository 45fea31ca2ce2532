"""`finetune()`: a text classifier on a pretrained encoder, as `tflm finetune` runs it.

The encoder comes from a handle (`tflm.hub`): hf://owner/name, a Hugging Face directory, a
tflm preset directory or a `.keras` file; a `Classifier` head goes on top; training uses
AdamW with warmup then linear decay (and optional layer-wise learning-rate decay), training batches of texts of
similar length padded to their own longest (rounded up to 16 tokens), validation every
`eval_every` steps, and early stopping on validation accuracy that keeps the best weights.
"""

import math
import random

import keras

from tflm.data.classification import classification_dataset, read_labelled
from tflm.models import Classifier, Encoder
from tflm.training.optimizers import WarmupLinear, adamw, layer_decay_factors


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
             dropout=0.1, eval_every=200, patience=3, seed=0, verbose=1):
    """Fine-tune `pretrained` on the labelled file `train`; returns the Classifier (also
    saved to `output`). Without `valid`, `validation_split` of the rows are held out."""
    keras.utils.set_random_seed(seed)
    encoder = load_encoder(pretrained)
    texts, labels = read_labelled(train, text_column, label_column)
    if valid is None:
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        held = set(order[: max(1, int(len(texts) * validation_split))])
        valid = ([t for i, t in enumerate(texts) if i in held], [l for i, l in enumerate(labels) if i in held])
        texts = [t for i, t in enumerate(texts) if i not in held]
        labels = [l for i, l in enumerate(labels) if i not in held]
    else:
        valid = read_labelled(valid, text_column, label_column)
    options = dict(seq_len=min(seq_len, encoder.max_sequence_length), batch_size=batch_size,
                   pad_to_multiple_of=16)  # short texts stay short; XLA compiles few shapes
    train_data = classification_dataset((texts, labels), encoder.tokenizer, seed=seed,
                                        bucket_by_length=True, **options)
    valid_data = classification_dataset(valid, encoder.tokenizer, shuffle=False,
                                        label_names=train_data.label_names, **options)

    model = Classifier(encoder, len(train_data.label_names), pooling=pooling, dropout=dropout,
                       label_names=train_data.label_names)  # the encoder's tokenizer
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
                  metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")], jit_compile=True)
    every = min(eval_every, total)
    stopping = keras.callbacks.EarlyStopping("val_accuracy", mode="max", patience=patience,
                                             restore_best_weights=True)
    model.fit(train_data.repeat(), steps_per_epoch=every, epochs=math.ceil(total / every),
              validation_data=valid_data, callbacks=[stopping], verbose=verbose)
    model.save(output)
    return model
