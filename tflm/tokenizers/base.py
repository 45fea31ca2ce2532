"""What every tflm tokenizer shares: explicit special tokens and a vocabulary check."""

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "mask_token", "unk_token")


class SpecialTokens:
    """Mixin: the special tokens (bos, eos, pad, mask, unk) as explicit config values.

    Each is a string or None; `eos_token_id` and the like give their ids (None when unset).
    """

    def _set_special_tokens(self, **tokens):
        for name in SPECIAL_TOKEN_NAMES:
            setattr(self, name, tokens.get(name))

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

    @property
    def bos_token_id(self):
        return self._special_id("bos_token")

    @property
    def eos_token_id(self):
        return self._special_id("eos_token")

    @property
    def pad_token_id(self):
        return self._special_id("pad_token")

    @property
    def mask_token_id(self):
        return self._special_id("mask_token")

    @property
    def unk_token_id(self):
        return self._special_id("unk_token")


def check_vocabulary_matches(tokenizer, vocab_size):
    """Fail fast when a tokenizer's ids do not fit a model's vocabulary."""
    size = tokenizer.vocabulary_size()
    if size != vocab_size:
        raise ValueError(
            f"The tokenizer ({type(tokenizer).__name__}) has {size} tokens but the model's "
            f"vocabulary has {vocab_size}: they were not made for each other."
        )


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
