"""GPT: a decoder-only language model of transformer or LSTM blocks."""

import functools
import inspect

import keras
from keras import ops

from tflm.layers import TokenAndPositionEmbedding, normalization
from tflm.layers.embedding import check_rope_scaling
from tflm.models.base import BLOCKS, TRANSFORMER_ARGUMENTS, Backbone
from tflm.models.losses import chunked_token_cross_entropy
from tflm.models.metrics import Perplexity
from tflm.models.presets import GPT_PRESETS


@keras.saving.register_keras_serializable(package="tflm")
class GPT(Backbone):
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

    A `tokenizer` (a `tflm.tokenizers` layer) can travel with the model: it is saved in
    the `.keras` archive and used by generation and export.

    Initialization is GPT-2's: every matrix from normal(0, `initializer_range`), each
    sublayer with a draw of its own; with `scaled_residual_init` (transformer blocks) the
    attention output and feed-forward down projections, which write into the residual
    stream, from normal(0, initializer_range / sqrt(2 * num_layers)) as GPT-2 and nanoGPT.
    Every GPT preset uses initializer_range=0.02 and scaled_residual_init=True.

    Arguments after `block` up to `remat` apply to both kinds of block; `num_heads`,
    `intermediate_dim`, `num_kv_heads`, `head_dim`, `activation`, `norm_position`,
    `use_bias`, `qkv_bias`, `rope_max_wavelength`, `rope_scaling`, `sliding_window` and
    `scaled_residual_init` configure transformer blocks, and an LSTM GPT refuses them.
    Those that Llama-family checkpoints need:

    - `head_dim`: the width of each attention head (default hidden_dim / num_heads);
    - `qkv_bias`: biases on the query, key and value projections only (Qwen2), with
      `use_bias=False` for the rest (default: as `use_bias`);
    - `rope_max_wavelength`: the RoPE base (`rope_theta`), and `rope_scaling`: None or
      Llama 3's `{"rope_type": "llama3", "factor", "low_freq_factor",
      "high_freq_factor", "original_max_position_embeddings"}`;
    - `sliding_window`: each position attends to the last `sliding_window` positions
      only, itself included (Mistral); None for all.

    Example:
    >>> model = GPT.from_preset("shakespeare-char")
    >>> logits = model(np.zeros((2, 16), "int32"))                 # (2, 16, 65)
    >>> cache = model.init_cache(batch_size=2, max_length=32)
    >>> logits, cache = model(np.zeros((2, 16), "int32"), cache=cache, cache_index=0)
    """

    presets = GPT_PRESETS

    def __init__(
        self,
        vocab_size,
        num_layers,
        hidden_dim,
        max_sequence_length,
        *,
        block="transformer",
        position="learned",
        norm="layernorm",
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        tie_embeddings=True,
        initializer_range=0.02,
        remat=False,
        num_heads=None,
        intermediate_dim=None,
        num_kv_heads=None,
        head_dim=None,
        activation="gelu",
        norm_position="pre",
        use_bias=True,
        qkv_bias=None,
        rope_max_wavelength=10000.0,
        rope_scaling=None,
        sliding_window=None,
        scaled_residual_init=True,
        tokenizer=None,
        **kwargs,
    ):
        super().__init__(tokenizer=tokenizer, **kwargs)
        if block not in BLOCKS:
            raise ValueError(f"Unknown block {block!r}; expected one of {sorted(BLOCKS)}.")
        if block == "lstm":
            _check_unused_transformer_arguments(locals())
        if check_rope_scaling(rope_scaling) is not None and position != "rotary":
            raise ValueError(f"rope_scaling scales rotary positions; position is {position!r}.")
        block_arguments = {name: value for name, value in locals().items()
                           if name in BLOCKS[block].arguments}
        self.set_config(
            vocab_size=vocab_size,
            num_layers=num_layers,
            hidden_dim=hidden_dim,
            max_sequence_length=max_sequence_length,
            block=block,
            position=position,
            norm=norm,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            tie_embeddings=tie_embeddings,
            initializer_range=initializer_range,
            remat=remat,
            **block_arguments,
        )

        # GPT-2's initialization: normal(0, initializer_range) for every matrix, and with
        # scaled_residual_init the projections into the residual stream (attention output,
        # feed-forward down) at initializer_range / sqrt(2 * num_layers).
        self.embedding = TokenAndPositionEmbedding(
            vocab_size,
            max_sequence_length,
            hidden_dim,
            position=position,
            tie_weights=tie_embeddings,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=initializer_range),
            dtype=self.dtype_policy,
            name="embedding",
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.blocks = BLOCKS[block].build(
            num_layers,
            hidden_dim,
            causal=True,
            position=position,
            norm=norm,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            initializer=keras.initializers.RandomNormal(stddev=initializer_range),
            dtype=self.dtype_policy,
            **block_arguments,
        )
        self.final_norm = normalization(norm, layer_norm_epsilon, self.dtype_policy, "final_norm")

    def build(self, input_shape):
        if self.built:  # a preset comes built: building again keeps its weights
            return
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
        self.check_length(token_ids)
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
        if training and cache is None and self.loss_chunk_size:
            return x  # compute_loss projects the hidden states chunk by chunk
        logits = ops.cast(self.embedding.token_embedding(x, reverse=True), "float32")
        return logits if cache is None else (logits, new_cache)  # (B, T, vocab_size)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile="auto",
                loss_chunk_size=None, **kwargs):
        """`keras.Model.compile` with defaults for language modelling.

        "auto" gives AdamW (learning rate 3e-4, weight decay 0.1), token cross-entropy on
        the logits, perplexity and token accuracy, and XLA compilation. Anything passed
        explicitly is used as it is (`tflm.training.adamw` builds a tuned AdamW).

        `loss_chunk_size=N` computes the training loss from the final hidden states, N
        tokens at a time (`tflm.models.losses.chunked_token_cross_entropy`), so that the
        whole (batch, length, vocab) float32 logits never exist: the same loss and
        gradients, for large vocabularies much less memory and memory traffic. The
        training step then reports the loss only (the metrics need the whole logits);
        validation reports every metric as usual.
        """
        if loss_chunk_size is not None:
            if loss != "auto":
                raise ValueError("loss_chunk_size computes the token cross-entropy itself; "
                                 f"it takes loss='auto', not {loss!r}.")
            if self.embedding.token_embedding.quantization_mode is not None:
                raise ValueError("loss_chunk_size needs an unquantized output projection.")
            if int(loss_chunk_size) < 1:
                raise ValueError(f"loss_chunk_size must be at least 1; got {loss_chunk_size}.")
        self.loss_chunk_size = loss_chunk_size and int(loss_chunk_size)
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=3e-4, weight_decay=0.1)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [Perplexity(), keras.metrics.SparseCategoricalAccuracy("token_accuracy")]
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile, **kwargs
        )

    loss_chunk_size = None  # set by compile

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # a training step with loss_chunk_size gets hidden states from call (see compile)
        self._outputs_hidden = bool(training and self.loss_chunk_size)
        if not self._outputs_hidden:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        embedding = self.embedding.token_embedding
        kernel = (ops.transpose(embedding.embeddings) if embedding.tie_weights
                  else embedding.reverse_embeddings)
        loss = chunked_token_cross_entropy(y_pred, kernel, y, sample_weight, self.loss_chunk_size)
        return ops.sum([loss, *(self._aggregate_additional_loss(extra) for extra in self.losses)])

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if getattr(self, "_outputs_hidden", False):  # the loss alone: the metrics need logits
            if self._compile_metrics is not None and not self._compile_metrics.built:
                # fit's epoch logs read every metric: build them as the logits would
                logits = keras.KerasTensor((*y.shape, self.vocab_size), "float32")
                self._compile_metrics.build(y, logits)
            return {metric.name: metric.result() for metric in self.metrics
                    if metric is not self._compile_metrics}
        return super().compute_metrics(x, y, y_pred, sample_weight)

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


def _check_unused_transformer_arguments(arguments):
    """An LSTM GPT has no attention or feed-forward: refuse their settings."""
    defaults = inspect.signature(GPT.__init__).parameters
    given = [name for name in TRANSFORMER_ARGUMENTS if arguments[name] != defaults[name].default]
    if given:
        raise ValueError(f"{', '.join(given)} configure transformer blocks; "
                         "a GPT of block='lstm' takes none of them.")
    if arguments["position"] == "rotary":
        raise ValueError("Rotary positions act inside attention; an LSTM GPT has none.")
