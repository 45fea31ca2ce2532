"""AdamW as language models are trained: warmup then cosine decay, no weight decay on
norms and biases, global-norm clipping and optional gradient accumulation."""

import keras


def warmup_cosine(learning_rate, total_steps, warmup_steps=0, min_learning_rate=0.0):
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to
    `min_learning_rate` at `total_steps` (Keras' CosineDecay with warmup)."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} must be at least 0 and below total_steps={total_steps}."
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=total_steps - warmup_steps,
        alpha=min_learning_rate / learning_rate,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def adamw(
    model,
    learning_rate=1e-3,
    total_steps=None,
    warmup_steps=0,
    min_learning_rate=0.0,
    weight_decay=0.1,
    decay_norms_and_biases=False,
    beta_1=0.9,
    beta_2=0.95,
    epsilon=1e-8,
    global_clipnorm=1.0,
    gradient_accumulation_steps=None,
    layer_decay_factors=None,
):
    """A `keras.optimizers.AdamW` for `model`, with GPT-style defaults.

    Args:
        model: a built model; its variables of rank < 2 (norm scales, biases) get no
            weight decay unless `decay_norms_and_biases` (nanoGPT's rule).
        learning_rate: the peak learning rate (or a Keras schedule, with `total_steps` None).
        total_steps: when given, warm up for `warmup_steps` and decay with a cosine to
            `min_learning_rate` at `total_steps`; otherwise the rate is constant.
        global_clipnorm: clip the gradients' global norm (None: no clipping).
        gradient_accumulation_steps: apply the mean of this many batches' gradients at
            once, for a larger effective batch than fits in memory.
        layer_decay_factors: `{variable path: learning-rate factor}` (see
            `layer_decay_factors()`): a `LayerDecayAdamW` instead of Keras' AdamW.
    """
    if not model.built:
        raise ValueError("Build the model (call it once, or model.build(shape)) before adamw().")
    schedule = learning_rate
    if total_steps is not None:
        schedule = warmup_cosine(learning_rate, total_steps, warmup_steps, min_learning_rate)
    settings = dict(
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=global_clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    if layer_decay_factors is None:
        optimizer = keras.optimizers.AdamW(**settings)
    else:
        optimizer = LayerDecayAdamW(layer_decay_factors, **settings)
    if not decay_norms_and_biases:
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if len(v.shape) < 2]
        )
    return optimizer


@keras.saving.register_keras_serializable(package="tflm")
class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then linear decay to 0
    at `total_steps`: BERT's fine-tuning schedule."""

    def __init__(self, learning_rate, total_steps, warmup_steps=0):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"warmup_steps={warmup_steps} must be at least 0 and below total_steps={total_steps}."
            )
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = (step + 1) / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / (self.total_steps - self.warmup_steps)
        return self.learning_rate * keras.ops.clip(keras.ops.minimum(warmup, decay), 0.0, 1.0)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="tflm")
class LayerDecayAdamW(keras.optimizers.AdamW):
    """AdamW with a learning-rate factor per variable (layer-wise learning-rate decay:
    lower layers of a pretrained encoder move less). `factors` maps variable paths to
    factors; variables not in it use 1."""

    def __init__(self, factors=None, **kwargs):
        super().__init__(**kwargs)
        self.factors = dict(factors or {})

    def build(self, var_list):
        super().build(var_list)
        # by the optimizer's variable index, which Adam's own update_step uses too
        self._index_factors = [self.factors.get(v.path, 1.0) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._index_factors[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, learning_rate * factor)

    def get_config(self):
        return {**super().get_config(), "factors": self.factors}


def layer_decay_factors(encoder, decay):
    """`{variable path: decay ** depth}` for an Encoder: its last block gets `decay`, each
    block below one more power, the embeddings the most; everything else (the pooler, a
    task head) 1."""
    factors = {}
    depth = len(encoder.blocks) + 1
    for variable in encoder.embedding.weights + (
        encoder.segment_embedding.weights if encoder.segment_embedding is not None else []
    ) + (encoder.embedding_norm.weights if encoder.embedding_norm is not None else []):
        factors[variable.path] = decay**depth
    for i, block in enumerate(encoder.blocks):
        for variable in block.weights:
            factors[variable.path] = decay ** (len(encoder.blocks) - i)
    return factors
