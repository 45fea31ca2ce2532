"""Multi-head attention with a fused QKV projection, grouped-query heads and a KV cache."""

import keras
from keras import ops

from tflm.layers.dense import Dense
from tflm.layers.embedding import RotaryEmbedding
from tflm.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tflm")
class MultiHeadAttention(keras.layers.Layer):
    """Self-attention `softmax(Q K^T / sqrt(d_k) + mask) V` over `num_heads` heads.

    Runs on `keras.ops.dot_product_attention`, which reaches cuDNN flash attention on a
    GPU under JAX; on TensorFlow a decode step's single new token takes a faster
    elementwise path (without RoPE).
    Queries, keys and values come from one fused projection; with `num_kv_heads <
    num_heads`, groups of query heads share a key/value head (grouped-query attention;
    `num_kv_heads=1` is multi-query attention).

    Args:
        num_heads: number of query heads; must divide the input width unless `head_dim`
            is given.
        num_kv_heads: number of key/value heads (default `num_heads`); must divide `num_heads`.
        head_dim: the width of each head (default: input width / num_heads). Queries,
            keys and values are `num_heads * head_dim` wide, which may differ from the
            input width; the output projection maps back to it.
        causal: each position attends only to itself and earlier positions.
        rotary: rotate queries and keys by their positions (RoPE).
        rope_max_wavelength: the RoPE base (`rope_theta` in Hugging Face configs).
        rope_scaling: None, or Llama 3's RoPE scaling (see `RotaryEmbedding`).
        sliding_window: with causal attention, each position sees only the last
            `sliding_window` positions, itself included (Mistral); None sees all.
        dropout: dropout on the attention output. Fused attention kernels have no
            dropout on the attention probabilities, so none is applied there.
        use_bias: biases on the projections.
        qkv_bias: biases on the query, key and value projections (default `use_bias`);
            Qwen2 has them there and nowhere else.
        kernel_initializer: the initializer of the projection matrices.
        output_kernel_initializer: the output projection's, when it differs (GPT-2
            scales down the projections that write into the residual stream).

    `call(x, padding_mask=None, cache=None, cache_index=None)`:
        x: (B, T, C). padding_mask: (B, T) or (B, S), true/1 at real tokens.
        cache: (B, 2, S, num_kv_heads, head_dim) keys and values of a decode of total
            length S; the keys and values of `x` are written at `cache_index` and the
            call returns `(output, updated_cache)`. Without a cache it returns `output`.
        One forward path serves training, prefill and step-by-step decoding.

    Example:
    >>> attention = MultiHeadAttention(num_heads=4, causal=True)
    >>> y = attention(np.zeros((2, 8, 32)))                              # (2, 8, 32)
    >>> cache = attention.init_cache(batch_size=2, max_length=16)
    >>> y, cache = attention(np.zeros((2, 8, 32)), cache=cache, cache_index=0)
    """

    def __init__(
        self,
        num_heads,
        num_kv_heads=None,
        head_dim=None,
        causal=False,
        rotary=False,
        rope_max_wavelength=10000.0,
        rope_scaling=None,
        sliding_window=None,
        dropout=0.0,
        use_bias=True,
        qkv_bias=None,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}."
            )
        if sliding_window is not None and not (causal and sliding_window >= 1):
            raise ValueError(
                f"sliding_window={sliding_window} needs causal attention and a window of at "
                "least 1 position."
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim  # the width in use once built (None: input width / num_heads)
        self._requested_head_dim = head_dim
        self.causal = causal
        self.rotary = rotary
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling = rope_scaling
        self.sliding_window = sliding_window
        self.dropout = dropout
        self.use_bias = use_bias
        self.qkv_bias = qkv_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )

        self.rotary_embedding = (
            RotaryEmbedding(rope_max_wavelength, rope_scaling, dtype=self.dtype_policy)
            if rotary
            else None
        )
        self.output_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if self._requested_head_dim is None and hidden_dim % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide the hidden width {hidden_dim}."
            )
        self.head_dim = self._requested_head_dim or hidden_dim // self.num_heads
        self.qkv = Dense(
            (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
            use_bias=self.use_bias if self.qkv_bias is None else self.qkv_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(input_shape)
        self.output_projection = Dense(
            hidden_dim,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.output_kernel_initializer),
            dtype=self.dtype_policy,
            name="output",
        )
        self.output_projection.build((*input_shape[:-1], self.num_heads * self.head_dim))

    def init_cache(self, batch_size, max_length, dtype=None):
        """Zeros for a decode of `max_length` positions: (B, 2, S, num_kv_heads, head_dim)."""
        shape = (batch_size, 2, max_length, self.num_kv_heads, self.head_dim)
        return ops.zeros(shape, dtype=dtype or self.compute_dtype)

    def call(self, x, padding_mask=None, cache=None, cache_index=None, training=None):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        start = 0 if cache_index is None else cache_index
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim

        qkv = self.qkv(x)  # (B, T, (N + 2K) * H)
        q = ops.reshape(qkv[..., :q_size], (batch, length, self.num_heads, self.head_dim))
        k = ops.reshape(
            qkv[..., q_size : q_size + kv_size],
            (batch, length, self.num_kv_heads, self.head_dim),
        )
        v = ops.reshape(
            qkv[..., q_size + kv_size :], (batch, length, self.num_kv_heads, self.head_dim)
        )
        if self.rotary:
            q = self.rotary_embedding(q, start_index=start)
            k = self.rotary_embedding(k, start_index=start)

        if cache is not None:
            if not self.causal:
                raise ValueError("A key/value cache needs causal attention.")
            # One in-place update of the whole cache (updating keys and values apart and
            # stacking them again would copy the cache at every step).
            update = ops.cast(ops.stack([k, v], axis=1), cache.dtype)  # (B, 2, T, K, H)
            cache = ops.slice_update(cache, (0, 0, start, 0, 0), update)
            k, v = cache[:, 0], cache[:, 1]

        mask = self._attention_mask(length, ops.shape(k)[1], start, padding_mask, cache)
        if cache is not None and x.shape[1] == 1 and self._one_query_path:
            y = self._one_query_attention(q, k, v, mask)  # (B, 1, N, H)
        else:
            if self.num_kv_heads == 1 < self.num_heads:
                # keras.ops.dot_product_attention on TensorFlow mishandles a single kv head.
                k = ops.repeat(k, self.num_heads, axis=2)
                v = ops.repeat(v, self.num_heads, axis=2)
            y = ops.dot_product_attention(
                q,
                ops.cast(k, q.dtype),
                ops.cast(v, q.dtype),
                mask=mask,
                is_causal=self.causal and mask is None,
            )  # (B, T, N, H)
        y = ops.reshape(y, (batch, length, self.num_heads * self.head_dim))
        y = self.output_dropout(self.output_projection(y), training=training)
        return y if cache is None else (y, cache)

    @property
    def _one_query_path(self):
        """Whether a decode step takes `_one_query_attention`: on TensorFlow, without RoPE.

        Measured in benchmarks/RESULTS.md ("Generation, round 4"): with RoPE, XLA fuses
        the rotation of q (a sine and cosine an element) into the product with every
        cached key, and the step got 3x slower; on JAX the same form was 2-4x slower.
        """
        return not self.rotary and keras.backend.backend() == "tensorflow"

    def _one_query_attention(self, q, k, v, mask):
        """Attention of one new token over the cache, as products and sums over the cache.

        A decode step's attention is one query row per head: TensorFlow's XLA on CPU
        runs `dot_product_attention` on it as one-row matrix products after copying the
        cache into heads-first order, which took 2.4x as long at batch 8 as this
        elementwise form, fused into two passes over the cache.
        q: (B, 1, N, H); k, v: (B, S, K, H); mask: (B or 1, 1, 1, S). Returns (B, 1, N, H).
        """
        batch, groups = ops.shape(q)[0], self.num_heads // self.num_kv_heads
        q = ops.cast(q, "float32")  # softmax and sums in float32 whatever the cache holds
        q = ops.reshape(q, (batch, 1, self.num_kv_heads, groups, self.head_dim))
        k = ops.cast(k, "float32")[:, :, :, None, :]  # (B, S, K, 1, H)
        v = ops.cast(v, "float32")[:, :, :, None, :]
        logits = ops.sum(q * k, axis=-1) * self.head_dim**-0.5  # (B, S, K, G)
        logits = ops.where(mask[:, 0, 0, :, None, None], logits, -1e30)
        probabilities = ops.softmax(logits, axis=1)
        y = ops.sum(probabilities[..., None] * v, axis=1)  # (B, K, G, H)
        y = ops.reshape(y, (batch, 1, self.num_heads, self.head_dim))
        return ops.cast(y, self.compute_dtype)

    def _attention_mask(self, query_length, key_length, start, padding_mask, cache):
        """A (B or 1, 1, T, S) boolean mask, or None when `is_causal` alone will do."""
        mask = None
        window = self.sliding_window
        if self.causal and (cache is not None or padding_mask is not None or window is not None):
            query_positions = (start + ops.arange(query_length))[:, None]
            key_positions = ops.arange(key_length)[None, :]
            mask = key_positions <= query_positions  # (T, S)
            if window is not None:
                mask = ops.logical_and(mask, key_positions > query_positions - window)
            mask = mask[None, None]  # (1, 1, T, S)
        if padding_mask is not None:
            padding = ops.cast(padding_mask, "bool")[:, None, None, :]  # (B, 1, 1, S)
            mask = padding if mask is None else ops.logical_and(mask, padding)
        return mask

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self._requested_head_dim,
            "causal": self.causal,
            "rotary": self.rotary,
            "rope_max_wavelength": self.rope_max_wavelength,
            "rope_scaling": self.rope_scaling,
            "sliding_window": self.sliding_window,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "qkv_bias": self.qkv_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_kernel_initializer": keras.initializers.serialize(
                self.output_kernel_initializer
            ),
        }
