"""Token embeddings and the position encodings that go with them."""

import keras
import numpy as np
from keras import ops

from tflm.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tflm")
class TokenEmbedding(keras.layers.ReversibleEmbedding):
    """Token ids -> vectors, and (with `reverse=True`) vectors -> vocabulary logits.

    With `tie_weights=True` the same `(vocab_size, hidden_dim)` matrix does both, as in
    GPT-2 and BERT; otherwise the reverse projection has a matrix of its own (a plain
    output head). Built on `keras.layers.ReversibleEmbedding`, which also brings LoRA and
    int8 quantization.

    Example:
    >>> embedding = TokenEmbedding(vocab_size=10, hidden_dim=4)
    >>> vectors = embedding(np.array([[1, 2, 3]]))                # (1, 3, 4)
    >>> logits = embedding(vectors, reverse=True)                 # (1, 3, 10)
    """

    def __init__(self, vocab_size, hidden_dim, tie_weights=True, **kwargs):
        super().__init__(
            input_dim=vocab_size, output_dim=hidden_dim, tie_weights=tie_weights, **kwargs
        )
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim

    def build(self, input_shape=None):
        super().build(input_shape)
        if getattr(self, "reverse_embeddings", None) is not None and self.quantization_mode is None:
            # ReversibleEmbedding draws the output head with the embeddings' own initializer,
            # hence its seed: the head would start as a reshaped copy of the embeddings.
            initializer = clone_initializer(keras.initializers.get(self.embeddings_initializer))
            self.reverse_embeddings.assign(
                initializer(self.reverse_embeddings.shape, self.reverse_embeddings.dtype)
            )

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras refuses to quantize subclasses of ReversibleEmbedding, in case they
        # change what the quantized call computes; this one renames arguments only.
        super().quantize(mode, type_check=False, config=config)

    def get_config(self):
        config = super().get_config()
        config["vocab_size"] = config.pop("input_dim")
        config["hidden_dim"] = config.pop("output_dim")
        return config


def _positions(start_index, length):
    return ops.cast(start_index, "float32") + ops.arange(length, dtype="float32")


def sinusoidal_encoding(positions, dim, max_wavelength=10000.0):
    """PE[pos, 2i] = sin(pos / max_wavelength^(2i/d)), PE[pos, 2i+1] = cos(same)."""
    index = ops.arange(dim, dtype="float32")
    exponent = (index - index % 2) / dim  # 2i/d for both members of a pair
    angles = positions[:, None] / ops.power(max_wavelength, exponent)[None, :]
    return ops.where(index % 2 == 0, ops.sin(angles), ops.cos(angles))  # (T, d)


@keras.saving.register_keras_serializable(package="tflm")
class SinusoidalPositionalEncoding(keras.layers.Layer):
    """Fixed sine/cosine position encodings of "Attention Is All You Need".

    `call(x, start_index=0)` returns encodings shaped like `x` (B, T, d) for positions
    `start_index .. start_index + T - 1`; add them to the token embeddings.
    """

    def __init__(self, max_wavelength=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.built = True

    def call(self, x, start_index=0):
        shape = ops.shape(x)
        encoding = sinusoidal_encoding(
            _positions(start_index, shape[1]), shape[2], self.max_wavelength
        )
        return ops.broadcast_to(ops.cast(encoding, self.compute_dtype), shape)

    def get_config(self):
        return {**super().get_config(), "max_wavelength": self.max_wavelength}


@keras.saving.register_keras_serializable(package="tflm")
class PositionEmbedding(keras.layers.Layer):
    """Learned position embeddings, one vector per position up to `sequence_length`.

    `call(x, start_index=0)` returns the embeddings of positions `start_index ..
    start_index + T - 1`, shaped like `x`.
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, x, start_index=0):
        shape = ops.shape(x)
        embeddings = ops.slice(
            ops.convert_to_tensor(self.position_embeddings),
            (start_index, 0),
            (shape[1], shape[2]),
        )
        return ops.broadcast_to(ops.cast(embeddings, self.compute_dtype), shape)

    def get_config(self):
        return {
            **super().get_config(),
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
        }


ROPE_TYPES = (None, "default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(scaling):
    """`scaling` (None or a dict in Hugging Face's `rope_scaling` spelling), checked."""
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"Unsupported RoPE scaling {kind!r}; tflm implements {ROPE_TYPES[1:]} (or None)."
        )
    missing = [key for key in LLAMA3_KEYS if key not in scaling] if kind == "llama3" else []
    if missing:
        raise ValueError(f"RoPE scaling 'llama3' needs {', '.join(missing)}; got {scaling}.")
    return scaling


def rope_inverse_frequencies(head_dim, max_wavelength=10000.0, scaling=None):
    """The (head_dim / 2,) float32 angles per position of each rotated pair.

    1 / max_wavelength^(2j/d), then with Llama 3's `scaling` (rope_type "llama3"): the
    pairs of wavelength above original_max_position_embeddings / low_freq_factor turn
    `factor` times slower, those below original / high_freq_factor unchanged, and those
    between interpolate smoothly (computed in float32 as transformers does).
    """
    exponents = np.arange(0, head_dim, 2, dtype="float32") / np.float32(head_dim)
    inverse = np.float32(1.0) / np.power(np.float32(max_wavelength), exponents)
    scaling = check_rope_scaling(scaling)
    if scaling is None or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return inverse
    factor, low, high, context = (np.float32(scaling[key]) for key in LLAMA3_KEYS)
    wavelength = np.float32(2 * np.pi) / inverse
    scaled = np.where(wavelength > context / low, inverse / factor, inverse)
    smooth = (context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return np.where(medium, smoothed, scaled).astype("float32")


@keras.saving.register_keras_serializable(package="tflm")
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding (RoPE), applied to queries and keys inside attention.

    `call(x, start_index=0)` rotates `x` of shape (B, T, heads, head_dim): each pair
    (x[j], x[j + d/2]) of position p turns by the angle p / max_wavelength^(2j/d)
    (the "rotate half" layout of GPT-NeoX and LLaMA).

    `scaling` stretches the long wavelengths for contexts beyond the pretraining one, in
    Hugging Face's `rope_scaling` spelling: None (or rope_type "default") for none, or
    Llama 3's `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}` (see `rope_inverse_frequencies`).

    Example:
    >>> rope = RotaryEmbedding(max_wavelength=500000.0)
    >>> q = rope(np.ones((2, 8, 4, 16)), start_index=3)                  # (2, 8, 4, 16)
    """

    def __init__(self, max_wavelength=10000.0, scaling=None, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling = check_rope_scaling(scaling)
        self.built = True

    def call(self, x, start_index=0):
        seq_len, head_dim = ops.shape(x)[1], x.shape[-1]
        inverse_freq = ops.convert_to_tensor(
            rope_inverse_frequencies(head_dim, self.max_wavelength, self.scaling)
        )
        angles = _positions(start_index, seq_len)[:, None] * inverse_freq[None, :]
        angles = ops.concatenate([angles, angles], axis=-1)[None, :, None, :]  # (1, T, 1, d)
        cos = ops.cast(ops.cos(angles), x.dtype)
        sin = ops.cast(ops.sin(angles), x.dtype)
        x1, x2 = ops.split(x, 2, axis=-1)
        rotated_half = ops.concatenate([-x2, x1], axis=-1)
        return x * cos + rotated_half * sin

    def get_config(self):
        return {**super().get_config(), "max_wavelength": self.max_wavelength,
                "scaling": self.scaling}


POSITION_KINDS = ("learned", "sinusoidal", "rotary", "none")


@keras.saving.register_keras_serializable(package="tflm")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """A `TokenEmbedding` plus a position encoding of the chosen kind.

    `position` is one of "learned", "sinusoidal", "rotary" or "none". Rotary positions
    are applied to queries and keys inside attention, so with "rotary" (and "none")
    this layer returns the token embeddings alone.

    `call(token_ids, start_index=0)` -> (B, T, hidden_dim); `start_index` is the
    position of the first token (non-zero when decoding with a cache).
    `embed.token_embedding(x, reverse=True)` projects back to vocabulary logits.
    """

    def __init__(
        self,
        vocab_size,
        sequence_length,
        hidden_dim,
        position="learned",
        tie_weights=True,
        embeddings_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position not in POSITION_KINDS:
            raise ValueError(
                f"Unknown position encoding {position!r}; expected one of {POSITION_KINDS}."
            )
        self.vocab_size = vocab_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.position = position
        self.tie_weights = tie_weights
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

        self.token_embedding = TokenEmbedding(
            vocab_size,
            hidden_dim,
            tie_weights=tie_weights,
            embeddings_initializer=clone_initializer(self.embeddings_initializer),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_encoding = None
        if position == "learned":
            self.position_encoding = PositionEmbedding(
                sequence_length,
                initializer=clone_initializer(self.embeddings_initializer),
                dtype=self.dtype_policy,
                name="position_embedding",
            )
        elif position == "sinusoidal":
            self.position_encoding = SinusoidalPositionalEncoding(
                dtype=self.dtype_policy, name="position_encoding"
            )

    def build(self, input_shape):
        self.token_embedding.build(input_shape)
        if self.position_encoding is not None:
            self.position_encoding.build((*input_shape, self.hidden_dim))

    def call(self, token_ids, start_index=0):
        x = self.token_embedding(token_ids)  # (B, T, C)
        if self.position_encoding is not None:
            x = x + self.position_encoding(x, start_index=start_index)
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "sequence_length": self.sequence_length,
            "hidden_dim": self.hidden_dim,
            "position": self.position,
            "tie_weights": self.tie_weights,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }
