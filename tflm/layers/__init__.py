"""Reusable layers, written with `keras.ops` only (they run on any Keras backend)."""

from tflm.layers.attention import MultiHeadAttention
from tflm.layers.blocks import LSTMBlock, TransformerBlock
from tflm.layers.dense import Dense
from tflm.layers.embedding import (
    PositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TokenAndPositionEmbedding,
    TokenEmbedding,
)
from tflm.layers.feedforward import FeedForward, normalization

__all__ = [
    "Dense",
    "FeedForward",
    "LSTMBlock",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TokenAndPositionEmbedding",
    "TokenEmbedding",
    "TransformerBlock",
    "normalization",
]
