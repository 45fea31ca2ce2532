"""Encoder: a bidirectional (BERT-like) transformer."""

import keras
from keras import ops

from tflm.layers import Dense, TokenAndPositionEmbedding, normalization
from tflm.layers.initializers import clone_initializer
from tflm.models.base import Backbone, transformer_blocks
from tflm.models.presets import ENCODER_PRESETS


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
class Encoder(Backbone):
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

    presets = ENCODER_PRESETS
    noun = "encoder"

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
        super().__init__(tokenizer=tokenizer, **kwargs)
        self.set_config(
            vocab_size=vocab_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments,
            position=position,
            activation=activation,
            norm=norm,
            norm_position=norm_position,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            use_bias=use_bias,
        )

        # BERT's initialization: truncated normal(0, 0.02), a copy for each sublayer.
        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.embedding = TokenAndPositionEmbedding(
            vocab_size,
            max_sequence_length,
            hidden_dim,
            position=position,
            embeddings_initializer=clone_initializer(initializer),
            dtype=self.dtype_policy,
            name="embedding",
        )
        self.segment_embedding = None
        if num_segments:
            self.segment_embedding = keras.layers.Embedding(
                num_segments,
                hidden_dim,
                embeddings_initializer=clone_initializer(initializer),
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
        self.blocks = transformer_blocks(
            num_layers,
            hidden_dim,
            causal=False,
            position=position,
            norm=norm,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            initializer=initializer,
            dtype=self.dtype_policy,
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            activation=activation,
            norm_position=norm_position,
            use_bias=use_bias,
        )
        self.final_norm = (
            None if post else normalization(norm, layer_norm_epsilon, self.dtype_policy, "final_norm")
        )
        self.pooler = Dense(
            hidden_dim,
            activation="tanh",
            kernel_initializer=clone_initializer(initializer),
            dtype=self.dtype_policy,
            name="pooler",
        )

    def build(self, input_shape):
        if self.built:  # a preset comes built: building again keeps its weights
            return
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
        self.check_length(token_ids)
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
