"""Task models that wrap an `Encoder`: masked-language-model pretraining and classification."""

import sys

import keras
import numpy as np
from keras import ops

from tflm.layers import Dense, normalization
from tflm.models.attached_tokenizer import (
    check_tokenizer,
    deserialize_tokenizer,
    serialize_tokenizer,
)
from tflm.models.encoder import Encoder, unpack_encoder_inputs

POOLINGS = ("cls", "mean")

# compile()'s default optimizer: fine-tuning a pretrained encoder (BERT's recipe, keras-hub's
# and Hugging Face's default rate). The number of training steps is not known at compile
# time, so the rate warms up and then stays constant instead of decaying.
FINE_TUNING_LEARNING_RATE = 5e-5
FINE_TUNING_WARMUP_STEPS = 50
FINE_TUNING_WEIGHT_DECAY = 0.01


class _EncoderTask(keras.Model):
    """Shared by the task models: an encoder and an optional tokenizer, saved with the task."""

    def __init__(self, encoder, tokenizer=None, uses_pooler=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, Encoder):
            raise TypeError(f"Expected a tflm.models.Encoder; got {type(encoder).__name__}.")
        self.encoder = encoder
        # A task that leaves the [CLS] pooler out freezes it, so training sees no missing
        # gradients; set both ways, as one encoder may serve a MaskedLM, then a Classifier.
        encoder.pooler.trainable = uses_pooler
        self._tokenizer = deserialize_tokenizer(tokenizer)
        check_tokenizer(self._tokenizer, encoder.vocab_size)

    @property
    def tokenizer(self):
        """The task's own tokenizer, or else its encoder's (kept once, in the encoder)."""
        return self._tokenizer if self._tokenizer is not None else self.encoder.tokenizer

    # the inputs `compile` builds an unbuilt task for: any batch size and length
    default_input_shapes = {"token_ids": (None, None), "padding_mask": (None, None)}

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile="auto", **kwargs):
        """`keras.Model.compile` with defaults for fine-tuning.

        "auto" gives AdamW at 5e-5 after a linear warmup over the first 50 steps (then
        constant), weight decay 0.01 except on norms and biases, gradients clipped to a
        global norm of 1; cross-entropy on the logits; accuracy. Anything passed explicitly
        is used as it is: for a linear decay to 0 over a known number of steps, as `tflm
        finetune` trains, pass `tflm.training.adamw(model, WarmupLinear(5e-5, total_steps,
        warmup_steps), weight_decay=0.01)` (from `tflm.training.optimizers`).

        Example:
        >>> classifier.compile()
        >>> classifier.fit(texts, labels, epochs=3, batch_size=32)
        """
        if optimizer == "auto":
            optimizer = self._fine_tuning_optimizer()
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = self._default_metrics(kwargs)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile,
                        **kwargs)

    def _default_metrics(self, kwargs):
        return [keras.metrics.SparseCategoricalAccuracy("accuracy")]

    def _fine_tuning_optimizer(self):
        if not self.built:  # weight decay is set per variable: they must exist
            self.build(self.default_input_shapes)
        # CosineDecay with alpha=1 decays nothing: a linear warmup to a constant rate
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=FINE_TUNING_LEARNING_RATE,
            warmup_steps=FINE_TUNING_WARMUP_STEPS)
        optimizer = keras.optimizers.AdamW(
            schedule, weight_decay=FINE_TUNING_WEIGHT_DECAY, global_clipnorm=1.0)
        optimizer.exclude_from_weight_decay(  # norm scales and biases (BERT's rule)
            var_list=[v for v in self.trainable_variables if len(v.shape) < 2])
        return optimizer

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "tokenizer": serialize_tokenizer(self._tokenizer),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)

    def save_to_preset(self, directory, overwrite=False):
        """Write the task model (its encoder and tokenizer included) into `directory`, as
        `Backbone.save_to_preset` does; `tflm.models.load(directory)` loads it back."""
        from tflm import hub

        return hub.save_preset(self, directory, overwrite)


@keras.saving.register_keras_serializable(package="tflm")
class MaskedLM(_EncoderTask):
    """Predicts the tokens at `mask_positions`: BERT's masked-language-model head.

    Inputs: the encoder's dict plus `"mask_positions"` (B, P) -> logits (B, P, vocab_size)
    in float32. The output projection is tied to the encoder's token embedding.

    `compile()` defaults to the fine-tuning AdamW (see `Classifier.compile`), cross-entropy
    averaged over the predictions the sample weights keep (`tflm.data.masked_lm_dataset`
    weights padded predictions 0) and the accuracy of those predictions.
    """

    default_input_shapes = {**_EncoderTask.default_input_shapes, "mask_positions": (None, None)}

    def __init__(self, encoder, tokenizer=None, **kwargs):
        super().__init__(encoder, tokenizer, **kwargs)
        self.transform = Dense(
            encoder.hidden_dim, dtype=self.dtype_policy, name="transform"
        )
        self.transform_norm = normalization(
            encoder.norm, encoder.layer_norm_epsilon, self.dtype_policy, "transform_norm"
        )

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile="auto", **kwargs):
        """`Classifier.compile`'s defaults, with the loss and accuracy of masked predictions."""
        if loss == "auto":  # the mean over real predictions, not over every slot
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight")
        super().compile(optimizer, loss, metrics, jit_compile, **kwargs)

    def _default_metrics(self, kwargs):
        # weighted, so that padded predictions (weight 0) do not count
        kwargs.setdefault("weighted_metrics", [keras.metrics.SparseCategoricalAccuracy("accuracy")])
        return None

    def build(self, input_shape):
        if self.built:  # built already (a preset, compile()): keep its weights
            return
        if not self.encoder.built:
            self.encoder.build(input_shape)
        batch = input_shape["mask_positions"][0]
        self.transform.build((batch, None, self.encoder.hidden_dim))
        self.transform_norm.build((batch, None, self.encoder.hidden_dim))
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.encoder.vocab_size,), initializer="zeros"
        )
        self.built = True

    def call(self, inputs, training=None):
        hidden = self.encoder(inputs, training=training)["sequence_output"]
        positions = ops.cast(inputs["mask_positions"], "int32")[..., None]  # (B, P, 1)
        x = ops.take_along_axis(hidden, positions, axis=1)  # (B, P, C)
        x = self.transform_norm(ops.gelu(self.transform(x), approximate=False))
        logits = self.encoder.embedding.token_embedding(x, reverse=True)
        return ops.cast(logits, "float32") + ops.cast(self.output_bias, "float32")


@keras.saving.register_keras_serializable(package="tflm")
class Classifier(_EncoderTask):
    """Sequence classification on an encoder: inputs -> logits (B, num_classes), float32.

    `pooling="cls"` uses the encoder's pooled [CLS] vector (BERT); `"mean"` averages the
    sequence output over real (unpadded) tokens (sentence-transformers). `compile()` with
    no arguments sets AdamW for fine-tuning, cross-entropy on the logits and accuracy.

    With a tokenizer (its own, or its encoder's), the classifier takes text as keras-hub's
    `TextClassifier` does through its preprocessor: `predict(texts)` returns probabilities
    (B, num_classes), `classify(texts)` the label names, and `fit` and `evaluate` take
    `(texts, labels)` (lists or arrays; labels are class ids or label names) or a
    `tf.data.Dataset` of `(text, class id)`. Texts become [CLS] ... [SEP], cut to
    the encoder's context and padded per batch (`tflm.data.classification.text_batches`).
    Token inputs (`{"token_ids", "padding_mask"}`) give logits, from `predict` as from a call.

    Example:
    >>> classifier = Classifier.from_preset("hf://sentence-transformers/all-MiniLM-L6-v2",
    ...     num_classes=2, pooling="mean", label_names=["negative", "positive"])
    >>> classifier.compile()
    >>> classifier.fit(["a fine film", "dull", ...], ["positive", "negative", ...], epochs=3)
    >>> classifier.predict(["a fine film", "dull"])                  # (2, 2) probabilities
    >>> classifier.classify(["a fine film", "dull"])                 # ["positive", "negative"]
    >>> logits = classifier({"token_ids": ids, "padding_mask": ids != 0})      # (B, 2)
    """

    def __init__(
        self,
        encoder,
        num_classes,
        pooling="cls",
        dropout=0.1,
        label_names=None,
        tokenizer=None,
        **kwargs,
    ):
        super().__init__(encoder, tokenizer, uses_pooler=pooling == "cls", **kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}.")
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(
                f"{len(label_names)} label names given for {num_classes} classes."
            )
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        self.label_names = None if label_names is None else list(label_names)
        self.pooled_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.head = Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="head",
        )

    @classmethod
    def from_preset(cls, handle, num_classes=None, **kwargs):
        """A Classifier from a handle (resolved by `tflm.hub`): one saved whole (a directory
        written by `save_to_preset`, a `.keras` file) is returned as it is; an encoder
        (`hf://owner/name`, a Hugging Face directory, an Encoder preset name or a saved
        Encoder) gets a new head of `num_classes`, with `kwargs` (pooling, dropout,
        label_names) as the constructor takes them.

        Example:
        >>> classifier = Classifier.from_preset(
        ...     "hf://sentence-transformers/all-MiniLM-L6-v2", num_classes=2, pooling="mean")
        >>> classifier.save_to_preset("sst2-classifier")
        >>> Classifier.from_preset("sst2-classifier")                 # the same classifier
        """
        from tflm import hub  # hub imports the model classes and tflm.convert: on use

        model = hub.load(handle)
        if isinstance(model, cls):
            if num_classes is not None or kwargs:
                raise ValueError(f"{handle} holds a whole {cls.__name__}; num_classes and the "
                                 "head's settings come with it. For a new head on its encoder, "
                                 f"use {cls.__name__}(Encoder.from_preset({str(handle)!r}), ...).")
            return model
        encoder = model if isinstance(model, Encoder) else getattr(model, "encoder", None)
        if not isinstance(encoder, Encoder):
            raise TypeError(f"{handle} holds a model of class {type(model).__name__}; an "
                            f"Encoder or a {cls.__name__} was expected.")
        if num_classes is None:
            raise ValueError(f"{handle} holds an encoder: give num_classes for the new head.")
        classifier = cls(encoder, num_classes, **kwargs)
        classifier.build({"token_ids": (None, None), "padding_mask": (None, None)})
        return classifier

    def build(self, input_shape):
        if self.built:  # built already (a preset, compile()): keep its weights
            return
        if not self.encoder.built:
            self.encoder.build(input_shape)
        self.head.build((None, self.encoder.hidden_dim))
        self.built = True

    def call(self, inputs, training=None):
        outputs = self.encoder(inputs, training=training)
        if self.pooling == "cls":
            pooled = outputs["pooled_output"]
        else:
            _, padding_mask, _ = unpack_encoder_inputs(inputs)
            weights = ops.cast(padding_mask, outputs["sequence_output"].dtype)[..., None]
            pooled = ops.sum(outputs["sequence_output"] * weights, axis=1) / ops.maximum(
                ops.sum(weights, axis=1), 1.0
            )
        logits = self.head(self.pooled_dropout(pooled, training=training))
        return ops.cast(logits, "float32")

    # -- text in, labels out ----------------------------------------------------------------

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Probabilities (B, num_classes) for texts; logits for token inputs, as a call
        gives them (see the class docstring)."""
        if not _is_text(x):
            return super().predict(x, batch_size, verbose, steps, callbacks)
        logits = super().predict(self._text_batches(x, batch_size=batch_size), verbose=verbose,
                                 steps=steps, callbacks=callbacks)
        logits = logits - logits.max(axis=-1, keepdims=True)  # a stable softmax
        return np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)

    def classify(self, texts, return_probabilities=False, batch_size=None):
        """The label name of each text (its class index as a string when the classifier
        has no `label_names`): one for a string, a list for a list; with
        `return_probabilities`, `(labels, probabilities)`.

        >>> classifier.classify(["a fine film", "dull"])               # ["positive", "negative"]
        """
        if not _is_text(texts):
            raise TypeError(f"classify takes a string or a list of strings; got "
                            f"{type(texts).__name__}. Call the classifier on token ids.")
        probabilities = self.predict(texts, batch_size=batch_size, verbose=0)
        names = self.label_names or [str(i) for i in range(self.num_classes)]
        labels = [names[i] for i in probabilities.argmax(axis=-1)]
        if isinstance(texts, str):
            labels, probabilities = labels[0], probabilities[0]
        return (labels, probabilities) if return_probabilities else labels

    def fit(self, x=None, y=None, batch_size=None, epochs=1, shuffle=True,
            validation_split=0.0, validation_data=None, **kwargs):
        """`keras.Model.fit`; `x` may also be texts with their labels `y`, or a dataset of
        `(text, label)` (see the class docstring)."""
        if _is_text(x):
            if validation_split:
                raise ValueError("validation_split does not apply to texts; give "
                                 "validation_data=(texts, labels).")
            x, y = self._text_batches(x, y, batch_size=batch_size, shuffle=shuffle), None
            batch_size, shuffle = None, False  # shuffled before batching, as Keras would
        if isinstance(validation_data, tuple) and _is_text(validation_data[0]):
            validation_data = self._text_batches(*validation_data)
        elif _is_text(validation_data):  # a dataset of (text, label)
            validation_data = self._text_batches(validation_data)
        return super().fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=shuffle,
                           validation_split=validation_split, validation_data=validation_data,
                           **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.evaluate`; `x` may also be texts with their labels `y`, or a
        dataset of `(text, label)`."""
        if _is_text(x):
            x, y, batch_size = self._text_batches(x, y, batch_size=batch_size), None, None
        return super().evaluate(x, y, batch_size=batch_size, **kwargs)

    def _text_batches(self, texts, labels=None, batch_size=None, shuffle=False):
        if self.tokenizer is None:
            raise ValueError(
                "This Classifier has no tokenizer, so it cannot read text: give it one "
                "(Classifier(..., tokenizer=...), or an encoder that has one, such as "
                "Classifier.from_preset('hf://...')), or pass token ids "
                '{"token_ids": ..., "padding_mask": ...}.')
        from tflm.data.classification import encode_labels, text_batches  # TensorFlow: on use

        if labels is not None and np.asarray(labels).dtype.kind in "USO":  # names -> ids
            if self.label_names is None:
                raise ValueError("Labels given as names need the classifier's label_names; "
                                 "give label_names=[...] or class ids.")
            labels, _ = encode_labels([str(label) for label in labels], self.label_names)
        return text_batches(texts, labels, tokenizer=self.tokenizer,
                            seq_len=self.encoder.max_sequence_length,
                            batch_size=batch_size or 32, shuffle=shuffle)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "label_names": self.label_names,
        }


def _is_text(x):
    """Whether `x` is text: a string, a list or array of strings, a TensorFlow string
    tensor, or a `tf.data.Dataset` whose elements start with strings. Checked without
    importing TensorFlow: token inputs never need it."""
    if isinstance(x, str):
        return True
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(item, str) for item in x)
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "US" or (x.dtype == object and x.size > 0
                                         and isinstance(x.flat[0], str))
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    if isinstance(x, tf.data.Dataset):
        return tf.nest.flatten(x.element_spec)[0].dtype == tf.string
    return isinstance(x, tf.Tensor) and x.dtype == tf.string
