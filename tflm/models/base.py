"""What GPT and Encoder share: configuration, presets, tokenizer, context, block factories."""

import collections
import math

import keras

from tflm.layers import Dense, LSTMBlock, TokenEmbedding, TransformerBlock
from tflm.layers.initializers import clone_initializer
from tflm.models.attached_tokenizer import (
    check_tokenizer,
    deserialize_tokenizer,
    serialize_tokenizer,
)


class Backbone(keras.Model):
    """The shared base of `GPT` and `Encoder`.

    A subclass names its `presets` and calls `set_config(**arguments)` with every
    constructor argument it will need again: they become attributes and its
    `get_config()`. The optional `tokenizer` (a `tflm.tokenizers` layer or its
    serialized config) travels with the model and must fit its `vocab_size`.
    `quantization` is the serialized `keras.quantizers.QuantizationConfig` that
    `quantize` applied (None: float weights), recorded so that a saved quantized model
    loads quantized.
    """

    presets = {}  # name -> complete configuration
    noun = "model"  # how errors name it

    def __init__(self, tokenizer=None, quantization=None, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = deserialize_tokenizer(tokenizer)
        self.quantization = quantization

    def set_config(self, **config):
        for name, value in config.items():
            setattr(self, name, value)
        self._config_names = tuple(config)
        check_tokenizer(self.tokenizer, self.vocab_size)

    @classmethod
    def from_preset(cls, handle, **overrides):
        """The model `handle` names, built (resolved by `tflm.hub`):

        - a built-in preset name: the architecture, with fresh weights (`gpt2-124m` has
          GPT-2's shapes, not its weights: those are `hf://openai-community/gpt2`);
        - `hf://owner/name[@revision]`: a Hugging Face Hub repository, downloaded into
          huggingface_hub's cache and imported;
        - a local Hugging Face model directory, a directory written by `save_to_preset`,
          or a `.keras` file.

        `overrides` change configuration values: any of a preset's; for loaded weights,
        those that keep the weights' shapes (dropout, dtype, remat).

        Example:
        >>> model = GPT.from_preset("hf://openai-community/gpt2", dropout=0.1)
        >>> model.save_to_preset("gpt2-dropout")
        >>> GPT.from_preset("gpt2-dropout")                         # the same model
        """
        from tflm import hub  # hub imports the model classes and tflm.convert: on use

        return hub.load(handle, cls, **overrides)

    def save_to_preset(self, directory, overwrite=False):
        """Write the model into `directory`: config.json (its config), model.weights.h5,
        the tokenizer's files (assets/tokenizer/) and metadata.json (tflm version,
        parameter count, class), which `from_preset(directory)` loads back. A directory
        that is not empty is an error unless `overwrite` (see `tflm.hub.save_preset`)."""
        from tflm import hub

        return hub.save_preset(self, directory, overwrite)

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Keras' `Model.quantize` (e.g. `"int8"`), applied to the layers that have a
        quantized form unless `filters` picks others: every `Dense` projection and the
        token embedding (and with it a tied output head). Norms, position embeddings and
        LSTMs stay as they are, without Keras' warning for each.

        `"int8"` stores int8 weights with one scale per output channel and quantizes
        each row of activations on the fly, so the products run in int8 × int8
        (fast on CPUs with VNNI at batch 8 and above; see benchmarks/RESULTS.md).
        Decode loops compiled before are dropped, so `generate` uses the new weights.
        Quantized with the default `filters` (any `config`), the model saves (`.keras`,
        `save_to_preset`) and loads back quantized.

        Example:
        >>> model.quantize("int8")
        >>> model.generate("ROMEO:", max_new_tokens=64)
        >>> model.save("model-int8.keras")
        """
        # Keras' wrapper has resolved `mode` into `config` (a QuantizationConfig) by now.
        if self.quantization is not None:
            raise ValueError(f"The {self.noun} is already quantized.")
        recordable = filters is None  # a custom filter (a callable) cannot be saved
        if filters is None:
            filters = lambda layer: isinstance(layer, (Dense, TokenEmbedding))  # noqa: E731
        super().quantize(mode, config=config, filters=filters, **kwargs)
        if recordable:
            self.quantization = keras.saving.serialize_keras_object(config)
        from tflm.generation.decode import compiled_loops  # generation builds on models

        compiled_loops(self).clear()

    def build_from_config(self, config):
        super().build_from_config(config)
        if self.quantization is not None:  # a saved quantized model: its variables' shapes
            config, self.quantization = self.quantization, None
            self.quantize(config=keras.saving.deserialize_keras_object(config))

    def check_length(self, token_ids):
        """Fail when `token_ids` (B, T) is longer than the context."""
        length = token_ids.shape[1]
        if length is not None and length > self.max_sequence_length:
            raise ValueError(
                f"The input has {length} tokens but the {self.noun}'s context is "
                f"{self.max_sequence_length} (max_sequence_length)."
            )

    def get_config(self):
        return {
            **super().get_config(),
            **{name: getattr(self, name) for name in self._config_names},
            "tokenizer": serialize_tokenizer(self.tokenizer),
            **({"quantization": self.quantization} if self.quantization else {}),
        }


# -- the block factories: `block` picks one ------------------------------------------------

TRANSFORMER_ARGUMENTS = (
    "num_heads", "intermediate_dim", "num_kv_heads", "head_dim", "activation", "norm_position",
    "use_bias", "qkv_bias", "rope_max_wavelength", "rope_scaling", "sliding_window",
    "scaled_residual_init",
)


def transformer_blocks(num_layers, hidden_dim, *, causal, position, norm, layer_norm_epsilon,
                       dropout, initializer, dtype, num_heads, intermediate_dim, num_kv_heads=None,
                       head_dim=None, activation="gelu", norm_position="pre", use_bias=True,
                       qkv_bias=None, rope_max_wavelength=10000.0, rope_scaling=None,
                       sliding_window=None, scaled_residual_init=False):
    """`num_layers` `TransformerBlock`s, each with initializers of its own.

    With `scaled_residual_init`, the two projections of a block that write into the
    residual stream start at 1/sqrt(2 * num_layers) of `initializer`'s deviation (GPT-2),
    so the stream's variance does not grow with depth.
    """
    for name, value in (("num_heads", num_heads), ("intermediate_dim", intermediate_dim)):
        if not value:
            raise ValueError(f"Transformer blocks need {name}; got {value!r}.")
    if head_dim is None and hidden_dim % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide hidden_dim={hidden_dim}.")
    output_initializer = clone_initializer(initializer)
    if scaled_residual_init:
        config = initializer.get_config()
        config["stddev"] /= math.sqrt(2 * num_layers)
        output_initializer = initializer.__class__.from_config(config)
    return [
        TransformerBlock(
            num_heads,
            intermediate_dim,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            causal=causal,
            rotary=position == "rotary",
            rope_max_wavelength=rope_max_wavelength,
            rope_scaling=rope_scaling,
            sliding_window=sliding_window,
            activation=activation,
            norm=norm,
            norm_position=norm_position,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            use_bias=use_bias,
            qkv_bias=qkv_bias,
            kernel_initializer=clone_initializer(initializer),
            output_kernel_initializer=clone_initializer(output_initializer),
            dtype=dtype,
            name=f"block_{i}",
        )
        for i in range(num_layers)
    ]


def lstm_blocks(num_layers, hidden_dim, *, causal, position, norm, layer_norm_epsilon, dropout, initializer,
                dtype):
    """`num_layers` residual `LSTMBlock`s (causal by nature; Keras' LSTM initializers)."""
    return [
        LSTMBlock(norm=norm, layer_norm_epsilon=layer_norm_epsilon, dropout=dropout, dtype=dtype,
                  name=f"block_{i}")
        for i in range(num_layers)
    ]


class BlockKind(collections.namedtuple("BlockKind", ["build", "arguments"])):
    """A block factory and the model arguments that only it takes."""


BLOCKS = {
    "transformer": BlockKind(transformer_blocks, TRANSFORMER_ARGUMENTS),
    "lstm": BlockKind(lstm_blocks, ()),
}
