"""Task models that wrap an `Encoder`: masked-language-model pretraining and classification."""

import keras
from keras import ops

from tflm.layers import normalization
from tflm.models.attached_tokenizer import (
    check_tokenizer,
    deserialize_tokenizer,
    serialize_tokenizer,
)
from tflm.models.encoder import Encoder, unpack_encoder_inputs

POOLINGS = ("cls", "mean")


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
    """

    def __init__(self, encoder, tokenizer=None, **kwargs):
        super().__init__(encoder, tokenizer, **kwargs)
        self.transform = keras.layers.Dense(
            encoder.hidden_dim, dtype=self.dtype_policy, name="transform"
        )
        self.transform_norm = normalization(
            encoder.norm, encoder.layer_norm_epsilon, self.dtype_policy, "transform_norm"
        )

    def build(self, input_shape):
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
    sequence output over real (unpadded) tokens (sentence-transformers). Compile with
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.

    Example:
    >>> classifier = Classifier(Encoder.from_preset("bert-tiny"), num_classes=2)
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
        self.head = keras.layers.Dense(
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

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "label_names": self.label_names,
        }
