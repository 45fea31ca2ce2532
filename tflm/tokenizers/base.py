"""What every tflm tokenizer shares: explicit special tokens, and ragged ids from text.

Shapes in comments: B texts in a batch; None, a ragged dimension (one length a text).
"""

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "mask_token", "unk_token")


def _special_token_id(name):
    return property(
        lambda self: self._special_id(name), doc=f"The id of `{name}` (None when it is unset)."
    )


class SpecialTokens:
    """Mixin: the special tokens (bos, eos, pad, mask, unk) as explicit config values.

    Each is a string or None; `eos_token_id` and the like give their ids (None when unset).
    """

    def _set_special_tokens(self, bos_token, eos_token, pad_token, mask_token, unk_token):
        """The one place a tokenizer's constructor records its special tokens."""
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.mask_token = mask_token
        self.unk_token = unk_token

    def _check_special_tokens_in(self, vocabulary, kind):
        """Fail fast when a special token is missing from `vocabulary` (a `kind` vocabulary)."""
        missing = [t for t in self.special_tokens_list() if t not in vocabulary]
        if missing:
            raise ValueError(f"Special token(s) {missing} are not in the {kind} vocabulary.")

    def special_tokens_config(self):
        return {name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES}

    def get_config(self):
        return {**super().get_config(), **self.special_tokens_config()}

    def special_tokens_list(self):
        """The special tokens that are set, in a fixed order, without repeats."""
        tokens = [getattr(self, name) for name in SPECIAL_TOKEN_NAMES]
        return list(dict.fromkeys(t for t in tokens if t is not None))

    def _special_id(self, name):
        token = getattr(self, name)
        return None if token is None else self.token_to_id(token)

    bos_token_id = _special_token_id("bos_token")
    eos_token_id = _special_token_id("eos_token")
    pad_token_id = _special_token_id("pad_token")
    mask_token_id = _special_token_id("mask_token")
    unk_token_id = _special_token_id("unk_token")


def tokenize_batch(tokenizer, texts):
    """Strings (B,) -> token ids as an int32 `tf.RaggedTensor` (B, None), in `tf.data`
    maps, exported graphs and eager code alike (keras-hub tokenizers give dense tensors
    for equal lengths and Python lists when run eagerly)."""
    import tensorflow as tf

    ids = tokenizer.tokenize(texts)
    if isinstance(ids, list):
        ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
    elif not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    return tf.cast(ids, tf.int32)
