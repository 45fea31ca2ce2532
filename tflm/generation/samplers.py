"""Samplers: how the next token is chosen from the logits, as small strategy objects.

Every sampler maps logits (B, V) to token ids (B,). Random choices use the Gumbel-max
trick with noise from a counter-based hash of (seed, step, row, token), written in
keras.ops: sampling is stateless, so it compiles into the decode loop, the same seed
gives the same text, and it does so on the TensorFlow and JAX backends alike.
(keras-hub's samplers keep their random state in a variable and run their own loop, so
tflm's loop uses these instead.)

Shapes in comments: B rows of logits (one a prompt, or a beam), V vocabulary size.
"""

from keras import ops

_NEG_INF = -1e9


def _mix(x):
    """A 32-bit integer hash (Wellons' lowbias32): neighbouring inputs give unrelated outputs."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, ops.cast(0x7FEB352D, "uint32"))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, ops.cast(0x846CA68B, "uint32"))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def gumbel_noise(seed, step, shape):
    """Gumbel(0, 1) noise of `shape` (B, V), a pure function of (seed, step, row, column).

    `seed` is one number for the batch, whose rows then draw apart, or (B,) numbers, one a
    row (exported `generate`): then a row's noise depends on its own seed alone, not on its
    place in the batch, and equals that of a batch of one with that seed."""
    rows, columns = shape
    key = _mix(_mix(ops.cast(seed, "uint32")) + ops.cast(step, "uint32"))
    row = ops.arange(rows) if ops.ndim(seed) == 0 else ops.zeros((rows,), "int32")
    row_keys = _mix(key + _mix(ops.cast(row, "uint32")))  # (B,)
    columns_keys = ops.multiply(ops.cast(ops.arange(columns), "uint32"), ops.cast(0x9E3779B9, "uint32"))
    bits = _mix(row_keys[:, None] + columns_keys[None, :])
    uniform = (ops.cast(ops.right_shift(bits, 8), "float32") + 0.5) / 16777216.0  # (0, 1)
    return -ops.log(-ops.log(uniform))


def keep_top_p(logits, sorted_logits, p):
    """`logits` (B, V) with every token outside the nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches `p`
    (a number, or (B, 1) for one value a row); `sorted_logits` (B, V) are the logits in
    descending order. Serves `TopP` and `PerRow`.
    """
    probabilities = ops.softmax(sorted_logits, axis=-1)
    before = ops.cumsum(probabilities, axis=-1) - probabilities  # mass above each token
    kept = ops.where(before < p, sorted_logits, 1e9)
    threshold = ops.min(kept, axis=-1, keepdims=True)  # the least likely kept logit, (B, 1)
    return ops.where(logits < threshold, _NEG_INF, logits)


class Sampler:
    """Base: temperature, an optional repetition penalty, then the most likely token `mask`
    keeps (after Gumbel noise, for random samplers).

    `repetition_penalty` > 1 makes tokens already in the sequence less likely (CTRL's
    rule: positive logits are divided by it, negative ones multiplied).
    """

    random = True

    def __init__(self, temperature=1.0, repetition_penalty=1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}.")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive; got {repetition_penalty}.")
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty

    def process(self, logits, seen=None):
        """Logits (B, V) after the repetition penalty and temperature."""
        if self.repetition_penalty != 1.0 and seen is not None:
            penalized = ops.where(
                logits > 0, logits / self.repetition_penalty, logits * self.repetition_penalty
            )
            logits = ops.where(seen, penalized, logits)
        return logits / self.temperature

    def mask(self, logits):
        """Logits with the tokens this sampler never picks set to -inf."""
        return logits

    def __call__(self, logits, seed=0, step=0, seen=None):
        logits = self.mask(self.process(ops.cast(logits, "float32"), seen))
        if self.random:
            logits = logits + gumbel_noise(seed, step, ops.shape(logits))
        return ops.cast(ops.argmax(logits, axis=-1), "int32")

    def key(self):
        """What a compiled decode loop depends on (samplers with equal keys share one)."""
        return (type(self).__name__, *sorted(vars(self).items()))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Greedy(Sampler):
    """The most likely token every time."""

    random = False

    def __init__(self, repetition_penalty=1.0):
        super().__init__(1.0, repetition_penalty)


class Random(Sampler):
    """A draw from the whole distribution softmax(logits / temperature)."""


class TopK(Sampler):
    """A draw from the `k` most likely tokens."""

    def __init__(self, k=40, temperature=1.0, repetition_penalty=1.0):
        super().__init__(temperature, repetition_penalty)
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}.")
        self.k = k

    def mask(self, logits):
        kth = ops.top_k(logits, k=min(self.k, ops.shape(logits)[-1]))[0][:, -1:]  # (B, 1)
        return ops.where(logits < kth, _NEG_INF, logits)


class TopP(Sampler):
    """Nucleus sampling: a draw from the smallest set of tokens whose probability reaches `p`."""

    def __init__(self, p=0.9, temperature=1.0, repetition_penalty=1.0):
        super().__init__(temperature, repetition_penalty)
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1]; got {p}.")
        self.p = p

    def mask(self, logits):
        sorted_logits = ops.top_k(logits, k=ops.shape(logits)[-1])[0]  # descending
        return keep_top_p(logits, sorted_logits, self.p)


class Beam(Sampler):
    """Beam search over `num_beams` hypotheses; the decode loop runs it.

    Finished hypotheses are ranked by sum of log-probabilities / length ** length_penalty
    (Hugging Face's convention: > 1 favours longer outputs).
    """

    random = False

    def __init__(self, num_beams=4, length_penalty=1.0, repetition_penalty=1.0):
        super().__init__(1.0, repetition_penalty)
        if num_beams < 1:
            raise ValueError(f"num_beams must be at least 1; got {num_beams}.")
        self.num_beams = num_beams
        self.length_penalty = length_penalty


class PerRow(Sampler):
    """Temperature, top-k and top-p given for each row, as tensors: the sampler of
    exported `generate` signatures, whose callers choose them per request.

    Args:
        temperature: (B,) floats; 0 picks the most likely token (greedy).
        top_k: (B,) ints; 0 keeps every token.
        top_p: (B,) floats in (0, 1]; 1 keeps every token. Applied after top-k.

    A row with the settings of `Greedy()`, `Random(t)`, `TopK(k, t)` or `TopP(p, t)`
    picks what that sampler picks for the same seed.
    """

    def __init__(self, temperature, top_k, top_p):
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.repetition_penalty = 1.0

    def mask(self, logits):
        vocab = ops.shape(logits)[-1]
        sorted_logits = ops.top_k(logits, k=vocab)[0]  # descending
        k = ops.where(self.top_k > 0, ops.minimum(self.top_k, vocab), vocab)  # (B,)
        kth = ops.take_along_axis(sorted_logits, ops.cast(k - 1, "int32")[:, None], axis=-1)
        logits = ops.where(logits < kth, _NEG_INF, logits)
        # top-p over the tokens top-k kept
        sorted_logits = ops.where(ops.arange(vocab)[None, :] < k[:, None], sorted_logits, _NEG_INF)
        nucleus = keep_top_p(logits, sorted_logits, self.top_p[:, None])
        return ops.where((self.top_p < 1.0)[:, None], nucleus, logits)

    def __call__(self, logits, seed=0, step=0, seen=None):
        logits = ops.cast(logits, "float32")
        greedy = self.temperature <= 0
        scaled = logits / ops.where(greedy, 1.0, self.temperature)[:, None]
        sampled = self.mask(scaled) + gumbel_noise(seed, step, ops.shape(logits))
        choice = ops.where(greedy, ops.argmax(logits, axis=-1), ops.argmax(sampled, axis=-1))
        return ops.cast(choice, "int32")


SAMPLERS = {"greedy": Greedy, "random": Random, "top_k": TopK, "top_p": TopP, "beam": Beam}


def get(sampler, **kwargs):
    """A sampler from an instance or a name ("greedy", "random", "top_k", "top_p", "beam")."""
    if isinstance(sampler, Sampler):
        if kwargs:
            raise ValueError(f"Options {sorted(kwargs)} go to the sampler's constructor.")
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}.")
    return SAMPLERS[sampler](**kwargs)
