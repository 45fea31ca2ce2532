"""`keras.layers.Dense` with its bias added where TensorFlow's XLA keeps decoding fast."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tflm")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense`, the same weights and results, faster at batch-1 decoding.

    On CPU, TensorFlow's XLA fuses a matrix-vector product with the `add` that follows
    it and emits the pair as one loop that is slower than the product alone: GPT-2
    small's 48 block products with their biases take 28.5 ms that way against 17.8 ms
    without the fusion (benchmarks/decode_step.py), and a whole decode step took 37 ms
    against 30 in a hand-patched comparison (benchmarks/RESULTS.md). Subtracting the negated bias gives the same floats (x - (-b) is
    x + b exactly) and XLA does not fuse a `subtract` into the product. JAX's XLA does
    not make this fusion; there the two spellings cost the same.
    """

    def call(self, inputs, training=None):
        x = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            x = ops.subtract(x, ops.negative(self.bias))
        if self.activation is not None:
            x = self.activation(x)
        return x

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras refuses to quantize Dense subclasses, in case they change what the
        # quantized call computes; this one changes only the float call.
        super().quantize(mode, type_check=False, config=config)
