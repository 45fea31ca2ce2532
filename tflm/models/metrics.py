"""Language-model metrics, in keras.ops (they run on any backend)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tflm")
class Perplexity(keras.metrics.Metric):
    """exp(mean token cross-entropy) over everything seen since the last reset.

    Takes integer targets (B, T) and logits (B, T, V); `sample_weight` (B, T) weights
    tokens (zero leaves them out). The mean is over tokens, not over batches, so the
    figure is the perplexity of the whole evaluated text.
    """

    def __init__(self, name="perplexity", dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        losses = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )
        weights = ops.ones_like(losses) if sample_weight is None else ops.cast(sample_weight, "float32")
        self.total.assign_add(ops.sum(losses * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.exp(self.total / ops.maximum(self.count, 1e-12))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)
