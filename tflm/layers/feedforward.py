"""Position-wise feed-forward network and the choice of normalization."""

import keras
from keras import ops

from tflm.layers.dense import Dense
from tflm.layers.initializers import clone_initializer

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
NORMS = ("layernorm", "rmsnorm")


def normalization(kind, epsilon, dtype=None, name=None):
    """A `keras.layers.LayerNormalization` or `keras.layers.RMSNormalization`."""
    if kind == "layernorm":
        return keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)
    if kind == "rmsnorm":
        return keras.layers.RMSNormalization(epsilon=epsilon, dtype=dtype, name=name)
    raise ValueError(f"Unknown norm {kind!r}; expected one of {NORMS}.")


@keras.saving.register_keras_serializable(package="tflm")
class FeedForward(keras.layers.Layer):
    """Two projections around a non-linearity: (B, T, C) -> (B, T, intermediate) -> (B, T, C).

    `activation` is "gelu" (exact, as BERT), "gelu_tanh" (the tanh approximation, as
    GPT-2), "relu", or "swiglu": `down(silu(gate(x)) * up(x))` with the gate and up
    projections fused into one matrix.

    `output_kernel_initializer` initializes the down projection when it should differ
    from `kernel_initializer` (GPT-2 scales down the projections that write into the
    residual stream).
    """

    def __init__(
        self,
        intermediate_dim,
        activation="gelu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; expected one of {ACTIVATIONS}.")
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )
        self.output_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        width = 2 * self.intermediate_dim if self.activation == "swiglu" else self.intermediate_dim
        self.up = Dense(
            width,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="up",
        )
        self.up.build(input_shape)
        self.down = Dense(
            input_shape[-1],
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.output_kernel_initializer),
            dtype=self.dtype_policy,
            name="down",
        )
        self.down.build((*input_shape[:-1], self.intermediate_dim))

    def call(self, x, training=None):
        h = self.up(x)
        if self.activation == "swiglu":
            gate, up = ops.split(h, 2, axis=-1)
            h = ops.silu(gate) * up
        elif self.activation == "relu":
            h = ops.relu(h)
        else:
            h = ops.gelu(h, approximate=self.activation == "gelu_tanh")
        return self.output_dropout(self.down(h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "intermediate_dim": self.intermediate_dim,
            "activation": self.activation,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_kernel_initializer": keras.initializers.serialize(
                self.output_kernel_initializer
            ),
        }
