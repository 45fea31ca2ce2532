"""GPT: a decoder-only language model of transformer or LSTM blocks."""

import functools

import keras
from keras import ops

from tflm.layers import LSTMBlock, TokenAndPositionEmbedding, TransformerBlock, normalization
from tflm.models.attached_tokenizer import (
    check_tokenizer,
    deserialize_tokenizer,
    serialize_tokenizer,
)
from tflm.models.metrics import Perplexity
from tflm.models.presets import GPT_PRESETS, resolve_preset

BLOCKS = ("transformer", "lstm")


@keras.saving.register_keras_serializable(package="tflm")
class GPT(keras.Model):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size), in float32.

    `block="transformer"` stacks causal pre-norm `TransformerBlock`s (GPT-2, LLaMA-style
    with `position="rotary"`, `activation="swiglu"`, `norm="rmsnorm"`); `block="lstm"`
    stacks `LSTMBlock`s, which with `position="sinusoidal"` and `tie_embeddings=False`
    is the classic embedding + positional encoding + LSTM + dense head model.

    The loss is not part of the model: compile with
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.

    `remat=True` recomputes each block's activations in the backward pass instead of
    keeping them (`keras.remat`): much less memory for long contexts, for about a third
    more compute per training step.

    Incremental decoding uses the same `call`: pass `cache=model.init_cache(B, S)` and
    `cache_index` (the position of the first token of `token_ids`), and the call
    returns `(logits, cache)`.

    Example:
    A `tokenizer` (a `tflm.tokenizers` layer) can travel with the model: it is saved in
    the `.keras` archive and used by generation and export.

    >>> model = GPT.from_preset("shakespeare-char")
    >>> logits = model(np.zeros((2, 16), "int32"))                 # (2, 16, 65)
    >>> cache = model.init_cache(batch_size=2, max_length=32)
    >>> logits, cache = model(np.zeros((2, 16), "int32"), cache=cache, cache_index=0)
    """

    def __init__(
        self,
        vocab_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length,
        block="transformer",
        position="learned",
        num_kv_heads=None,
        activation="gelu",
        norm="layernorm",
        norm_position="pre",
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        tie_embeddings=True,
        use_bias=True,
        rope_max_wavelength=10000.0,
        remat=False,
        tokenizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if block not in BLOCKS:
            raise ValueError(f"Unknown block {block!r}; expected one of {BLOCKS}.")
        if block == "transformer" and hidden_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide hidden_dim={hidden_dim}."
            )
        if block == "lstm" and position == "rotary":
            raise ValueError("Rotary positions act inside attention; an LSTM GPT has none.")
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.block = block
        self.position = position
        self.num_kv_heads = num_kv_heads
        self.activation = activation
        self.norm = norm
        self.norm_position = norm_position
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.use_bias = use_bias
        self.rope_max_wavelength = rope_max_wavelength
        self.remat = remat
        self.tokenizer = deserialize_tokenizer(tokenizer)
        check_tokenizer(self.tokenizer, vocab_size)

        # GPT-2's initialization: normal(0, 0.02) for every matrix.
        initializer = keras.initializers.RandomNormal(stddev=0.02)
        self.embedding = TokenAndPositionEmbedding(
            vocab_size,
            max_sequence_length,
            hidden_dim,
            position=position,
            tie_weights=tie_embeddings,
            embeddings_initializer=initializer,
            dtype=self.dtype_policy,
            name="embedding",
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        if block == "transformer":
            self.blocks = [
                TransformerBlock(
                    num_heads,
                    intermediate_dim,
                    num_kv_heads=num_kv_heads,
                    causal=True,
                    rotary=position == "rotary",
                    rope_max_wavelength=rope_max_wavelength,
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
        else:
            self.blocks = [
                LSTMBlock(
                    norm=norm,
                    layer_norm_epsilon=layer_norm_epsilon,
                    dropout=dropout,
                    dtype=self.dtype_policy,
                    name=f"block_{i}",
                )
                for i in range(num_layers)
            ]
        self.final_norm = normalization(norm, layer_norm_epsilon, self.dtype_policy, "final_norm")

    @classmethod
    def from_preset(cls, name, **overrides):
        """A GPT built from the named preset (fresh weights), with `overrides` applied."""
        return cls(**resolve_preset(GPT_PRESETS, name, overrides))


    def build(self, input_shape):
        hidden_shape = (*input_shape, self.hidden_dim)
        self.embedding.build(input_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.final_norm.build(hidden_shape)
        self.built = True

    @property
    def cache_is_positional(self):
        """True when the cache is keyed by position (transformer blocks), so a batch of
        right-padded prompts can be prefilled in one call; False for a recurrent state
        (LSTM blocks), which must be fed each row's tokens only."""
        return all(block.cache_is_positional for block in self.blocks)

    def init_cache(self, batch_size, max_length):
        """Per-block decoding state for `max_length` positions: a list, one entry a block."""
        if isinstance(max_length, int) and max_length > self.max_sequence_length:
            raise ValueError(
                f"A decode of {max_length} positions exceeds the model's context of "
                f"{self.max_sequence_length} tokens."
            )
        if not self.built:
            self.build((batch_size, max_length))
        return [block.init_cache(batch_size, max_length) for block in self.blocks]

    def call(self, token_ids, cache=None, cache_index=None, training=None):
        length = token_ids.shape[1]
        if length is not None and length > self.max_sequence_length:
            raise ValueError(
                f"The input has {length} tokens but the model's context is "
                f"{self.max_sequence_length} (max_sequence_length)."
            )
        start = 0 if cache_index is None else cache_index
        x = self.embedding(token_ids, start_index=start)  # (B, T, C)
        x = self.embedding_dropout(x, training=training)
        new_cache = []
        for i, block in enumerate(self.blocks):
            if cache is None:
                # remat: keep only each block's input for the backward pass and recompute
                # the block's activations there (memory for long contexts, ~1/3 more compute)
                run = functools.partial(block, training=training)
                x = keras.remat(run)(x) if self.remat else run(x)
            else:
                x, block_cache = block(x, cache=cache[i], cache_index=start, training=training)
                new_cache.append(block_cache)
        x = self.final_norm(x)
        logits = ops.cast(self.embedding.token_embedding(x, reverse=True), "float32")
        return logits if cache is None else (logits, new_cache)  # (B, T, vocab_size)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile="auto", **kwargs):
        """`keras.Model.compile` with defaults for language modelling.

        "auto" gives AdamW (learning rate 3e-4, weight decay 0.1), token cross-entropy on
        the logits, perplexity and token accuracy, and XLA compilation. Anything passed
        explicitly is used as it is (`tflm.training.adamw` builds a tuned AdamW).
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=3e-4, weight_decay=0.1)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [Perplexity(), keras.metrics.SparseCategoricalAccuracy("token_accuracy")]
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile, **kwargs
        )

    def generate(self, prompts, max_new_tokens=64, sampler="greedy", stop_tokens=None,
                 seed=None, truncate=False, **sampler_options):
        """Continue each prompt by up to `max_new_tokens` tokens.

        Args:
            prompts: a string, a list of strings, a list of token ids or a list of lists
                of ids (lengths may differ). Strings need the model's tokenizer.
            sampler: a `tflm.generation` sampler (`Greedy()`, `Random(temperature)`,
                `TopK(k)`, `TopP(p)`, `Beam(num_beams, length_penalty)`, each with an
                optional `repetition_penalty`) or its name with `**sampler_options`.
            stop_tokens: ids or token strings that end a row (default: the tokenizer's
                EOS for text prompts); the stop token is not part of the completion.
            seed: the same seed gives the same completions.
            truncate: keep only the last tokens of a prompt that does not leave room for
                `max_new_tokens` in the context (otherwise that is an error).

        Returns the completions (new text only, or new ids when given ids): one for a
        single prompt, a list for a list. The decode loop is compiled on first use for
        each (batch size, length bucket, sampler) and reused.

        >>> model.generate("ROMEO:", max_new_tokens=100, sampler="top_p", p=0.9, seed=1)
        """
        from tflm.generation import generate  # generation builds on models: imported on use

        return generate(self, prompts, max_new_tokens, sampler, stop_tokens, seed, truncate,
                        **sampler_options)

    def stream(self, prompt, max_new_tokens=64, sampler="greedy", stop_tokens=None, seed=None,
               truncate=False, **sampler_options):
        """Yield the completion of one prompt piece by piece as it is produced (eager)."""
        from tflm.generation import stream

        return stream(self, prompt, max_new_tokens, sampler, stop_tokens, seed, truncate,
                      **sampler_options)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.vocab_size)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "block": self.block,
            "position": self.position,
            "num_kv_heads": self.num_kv_heads,
            "activation": self.activation,
            "norm": self.norm,
            "norm_position": self.norm_position,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
            "tie_embeddings": self.tie_embeddings,
            "use_bias": self.use_bias,
            "rope_max_wavelength": self.rope_max_wavelength,
            "remat": self.remat,
            "tokenizer": serialize_tokenizer(self.tokenizer),
        }

