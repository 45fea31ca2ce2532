"""Encoder: a bidirectional (BERT-like) transformer."""

import keras
from keras import ops

from tflm.layers import TokenAndPositionEmbedding, TransformerBlock, normalization
from tflm.models.attached_tokenizer import (
    check_tokenizer,
    deserialize_tokenizer,
    serialize_tokenizer,
)
from tflm.models.presets import ENCODER_PRESETS, resolve_preset


def token_ids_of(inputs):
    """The token ids (or their shape) of a dict of encoder inputs or a bare tensor."""
    if not isinstance(inputs, dict):
        return inputs
    if "token_ids" not in inputs:
        raise ValueError(f"Encoder inputs need 'token_ids'; got keys {sorted(inputs)}.")
    return inputs["token_ids"]


def unpack_encoder_inputs(inputs):
    """`(token_ids, padding_mask, segment_ids)` from a dict or a bare token-id tensor.

    A missing padding mask means no padding; missing segment ids mean segment 0.
    """
    token_ids = token_ids_of(inputs)
    inputs = inputs if isinstance(inputs, dict) else {}
    padding_mask = inputs.get("padding_mask")
    if padding_mask is None:
        padding_mask = ops.ones_like(token_ids, dtype="bool")
    segment_ids = inputs.get("segment_ids")
    if segment_ids is None:
        segment_ids = ops.zeros_like(token_ids)
    return token_ids, padding_mask, segment_ids


@keras.saving.register_keras_serializable(package="tflm")
class Encoder(keras.Model):
    """Token ids + padding mask (+ segment ids) -> contextual vectors, BERT-style.

    Inputs: a dict with `"token_ids"` (B, T), `"padding_mask"` (B, T; true at real
    tokens) and optionally `"segment_ids"` (B, T), or a bare token-id tensor (no padding).
    Outputs: a dict with `"sequence_output"` (B, T, C) and `"pooled_output"` (B, C), the
    tanh-projected vector of the first ([CLS]) token, as BERT.

    A `tokenizer` can travel with the encoder (saved in its `.keras` file), as with `GPT`.

    `norm_position="post"` is BERT's layout (a norm after the embeddings and after each
    residual); `"pre"` normalizes each sublayer's input and adds a final norm.

    Example:
    >>> encoder = Encoder.from_preset("bert-tiny")
    >>> outputs = encoder({"token_ids": ids, "padding_mask": ids != 0})
    >>> outputs["sequence_output"].shape, outputs["pooled_output"].shape
    """

    def __init__(
        self,
        vocab_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length=512,
        num_segments=2,
        position="learned",
        activation="gelu",
        norm="layernorm",
        norm_position="post",
        layer_norm_epsilon=1e-12,
        dropout=0.1,
        use_bias=True,
        tokenizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tokenizer = deserialize_tokenizer(tokenizer)
        check_tokenizer(self.tokenizer, vocab_size)
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden_dim={hidden_dim}.")
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.position = position
        self.activation = activation
        self.norm = norm
        self.norm_position = norm_position
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.use_bias = use_bias

        # BERT's initialization: truncated normal(0, 0.02).
        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.embedding = TokenAndPositionEmbedding(
            vocab_size,
            max_sequence_length,
            hidden_dim,
            position=position,
            embeddings_initializer=initializer,
            dtype=self.dtype_policy,
            name="embedding",
        )
        self.segment_embedding = None
        if num_segments:
            self.segment_embedding = keras.layers.Embedding(
                num_segments,
                hidden_dim,
                embeddings_initializer=initializer,
                dtype=self.dtype_policy,
                name="segment_embedding",
            )
        post = norm_position == "post"
        self.embedding_norm = (
            normalization(norm, layer_norm_epsilon, self.dtype_policy, "embedding_norm")
            if post
            else None
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.blocks = [
            TransformerBlock(
                num_heads,
                intermediate_dim,
                causal=False,
                rotary=position == "rotary",
                activation=activation,
                norm=norm,
                norm_position=norm_position,
                layer_norm_epsilon=layer_norm_epsilon,
                dropout=dropout,
                use_bias=use_bias,
                kernel_initializer=initializer,
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = (
            None if post else normalization(norm, layer_norm_epsilon, self.dtype_policy, "final_norm")
        )
        self.pooler = keras.layers.Dense(
            hidden_dim,
            activation="tanh",
            kernel_initializer=initializer,
            dtype=self.dtype_policy,
            name="pooler",
        )

    @classmethod
    def from_preset(cls, name, **overrides):
        """An Encoder built from the named preset (fresh weights), with `overrides` applied."""
        return cls(**resolve_preset(ENCODER_PRESETS, name, overrides))

    def build(self, input_shape):
        ids_shape = token_ids_of(input_shape)
        hidden_shape = (*ids_shape, self.hidden_dim)
        self.embedding.build(ids_shape)
        if self.segment_embedding is not None:
            self.segment_embedding.build(ids_shape)
        for layer in (self.embedding_norm, *self.blocks, self.final_norm):
            if layer is not None:
                layer.build(hidden_shape)
        self.pooler.build((ids_shape[0], self.hidden_dim))
        self.built = True

    def call(self, inputs, training=None):
        token_ids, padding_mask, segment_ids = unpack_encoder_inputs(inputs)
        length = token_ids.shape[1]
        if length is not None and length > self.max_sequence_length:
            raise ValueError(
                f"The input has {length} tokens but the encoder's context is "
                f"{self.max_sequence_length} (max_sequence_length)."
            )
        x = self.embedding(token_ids)  # (B, T, C)
        if self.segment_embedding is not None:
            x = x + self.segment_embedding(segment_ids)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.embedding_dropout(x, training=training)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return {"sequence_output": x, "pooled_output": self.pooler(x[:, 0, :])}

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "position": self.position,
            "activation": self.activation,
            "norm": self.norm,
            "norm_position": self.norm_position,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "tokenizer": serialize_tokenizer(self.tokenizer),
        }
