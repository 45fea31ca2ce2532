"""The repeated blocks of a language model: transformer and LSTM, with one call signature.

Both take `(x, padding_mask=None, cache=None, cache_index=None)` and return `x`, or
`(x, cache)` when given a cache, so a model can stack either kind.
"""

import keras
from keras import ops

from tflm.layers.attention import MultiHeadAttention
from tflm.layers.feedforward import FeedForward, normalization
from tflm.layers.initializers import clone_initializer

NORM_POSITIONS = ("pre", "post")


@keras.saving.register_keras_serializable(package="tflm")
class TransformerBlock(keras.layers.Layer):
    """Attention and feed-forward sublayers, each with a residual connection.

    `norm_position="pre"` (GPT-2 and later) normalizes the input of each sublayer:
        x = x + attention(norm_1(x)); x = x + feed_forward(norm_2(x))
    `norm_position="post"` (original Transformer, BERT) normalizes after the residual:
        x = norm_1(x + attention(x)); x = norm_2(x + feed_forward(x))
    `causal=True` for decoders, `False` (bidirectional, with a padding mask) for encoders.
    `output_kernel_initializer` initializes the two projections that write into the
    residual stream (attention output, feed-forward down) when they should differ from
    `kernel_initializer`. `num_kv_heads`, `head_dim`, `rope_max_wavelength`,
    `rope_scaling`, `sliding_window` and `qkv_bias` go to `MultiHeadAttention`.

    Example:
    >>> block = TransformerBlock(num_heads=4, intermediate_dim=128, causal=True)
    >>> y = block(np.zeros((2, 8, 32)))                                   # (2, 8, 32)
    """

    # The cache holds keys and values by position, so right-padded prompts of different
    # lengths can be prefilled together: a row's later tokens overwrite its padding.
    cache_is_positional = True

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        num_kv_heads=None,
        head_dim=None,
        causal=True,
        rotary=False,
        rope_max_wavelength=10000.0,
        rope_scaling=None,
        sliding_window=None,
        activation="gelu",
        norm="layernorm",
        norm_position="pre",
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        use_bias=True,
        qkv_bias=None,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"Unknown norm_position {norm_position!r}; expected one of {NORM_POSITIONS}."
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.causal = causal
        self.rotary = rotary
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling = rope_scaling
        self.sliding_window = sliding_window
        self.activation = activation
        self.norm = norm
        self.norm_position = norm_position
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.use_bias = use_bias
        self.qkv_bias = qkv_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )

        self.norm_1 = normalization(norm, layer_norm_epsilon, self.dtype_policy, "norm_1")
        self.attention = MultiHeadAttention(
            num_heads,
            num_kv_heads,
            head_dim=head_dim,
            causal=causal,
            rotary=rotary,
            rope_max_wavelength=rope_max_wavelength,
            rope_scaling=rope_scaling,
            sliding_window=sliding_window,
            dropout=dropout,
            use_bias=use_bias,
            qkv_bias=qkv_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            output_kernel_initializer=clone_initializer(self.output_kernel_initializer),
            dtype=self.dtype_policy,
            name="attention",
        )
        self.norm_2 = normalization(norm, layer_norm_epsilon, self.dtype_policy, "norm_2")
        self.feed_forward = FeedForward(
            intermediate_dim,
            activation=activation,
            dropout=dropout,
            use_bias=use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            output_kernel_initializer=clone_initializer(self.output_kernel_initializer),
            dtype=self.dtype_policy,
            name="feed_forward",
        )

    def build(self, input_shape):
        for layer in (self.norm_1, self.attention, self.norm_2, self.feed_forward):
            layer.build(input_shape)

    def init_cache(self, batch_size, max_length, dtype=None):
        return self.attention.init_cache(batch_size, max_length, dtype)

    def call(self, x, padding_mask=None, cache=None, cache_index=None, training=None):
        def attend(h):
            return self.attention(
                h, padding_mask=padding_mask, cache=cache, cache_index=cache_index,
                training=training,
            )

        if self.norm_position == "pre":
            attended = attend(self.norm_1(x))
            y, cache = attended if cache is not None else (attended, None)
            x = x + y
            x = x + self.feed_forward(self.norm_2(x), training=training)
        else:
            attended = attend(x)
            y, cache = attended if cache is not None else (attended, None)
            x = self.norm_1(x + y)
            x = self.norm_2(x + self.feed_forward(x, training=training))
        return x if cache is None else (x, cache)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "causal": self.causal,
            "rotary": self.rotary,
            "rope_max_wavelength": self.rope_max_wavelength,
            "rope_scaling": self.rope_scaling,
            "sliding_window": self.sliding_window,
            "activation": self.activation,
            "norm": self.norm,
            "norm_position": self.norm_position,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "qkv_bias": self.qkv_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_kernel_initializer": keras.initializers.serialize(
                self.output_kernel_initializer
            ),
        }


@keras.saving.register_keras_serializable(package="tflm")
class LSTMBlock(keras.layers.Layer):
    """The recurrent alternative to `TransformerBlock`: x = x + dropout(lstm(norm(x))).

    Its "cache" is the recurrent state, (B, 2, C) holding h and c, so incremental
    decoding carries the state instead of keys and values. It is causal by nature;
    `padding_mask` and `cache_index` are accepted for a common signature and unused
    (GPT pads on the right, so padding never precedes a real token).

    Example:
    >>> block = LSTMBlock()
    >>> y = block(np.zeros((2, 8, 32)))                                   # (2, 8, 32)
    """

    # The recurrent state has seen every token fed to it, padding included.
    cache_is_positional = False

    def __init__(self, norm="layernorm", layer_norm_epsilon=1e-5, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.norm = norm
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.norm_1 = normalization(norm, layer_norm_epsilon, self.dtype_policy, "norm_1")
        self.output_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.hidden_dim = input_shape[-1]
        self.norm_1.build(input_shape)
        self.lstm = keras.layers.LSTM(
            self.hidden_dim,
            return_sequences=True,
            return_state=True,
            dtype=self.dtype_policy,
            name="lstm",
        )
        self.lstm.build(input_shape)

    def init_cache(self, batch_size, max_length=None, dtype=None):
        """Zero recurrent state (B, 2, C); `max_length` is unused (the state has no length)."""
        return ops.zeros((batch_size, 2, self.hidden_dim), dtype=dtype or self.compute_dtype)

    def call(self, x, padding_mask=None, cache=None, cache_index=None, training=None):
        initial_state = None if cache is None else [cache[:, 0], cache[:, 1]]
        y, h, c = self.lstm(self.norm_1(x), initial_state=initial_state, training=training)
        x = x + self.output_dropout(y, training=training)
        return x if cache is None else (x, ops.stack([h, c], axis=1))

    def get_config(self):
        return {
            **super().get_config(),
            "norm": self.norm,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
        }
