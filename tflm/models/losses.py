"""Token cross-entropy computed from hidden states, a chunk of tokens at a time."""

from keras import ops


def chunked_token_cross_entropy(hidden, kernel, targets, sample_weight=None, chunk_size=4096):
    """The token cross-entropy of `logits = hidden @ kernel` without the whole logits.

    Equals `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` on those logits
    (the sum of the weighted token losses over the number of tokens), values and
    gradients. A language model's logits are the biggest tensor of a training step (GPT-2
    at 16 x 1024 tokens: 3.3 GB in float32), written once and read back several times by
    the softmax, the loss and their gradients. Here `chunk_size` tokens at a time are
    projected, reduced to their loss and to the gradients of `hidden` and `kernel`, and
    dropped, so memory holds one chunk's logits at most. The gradients are computed even
    when none is asked for: use it for training, where they always are.

    Args:
        hidden: (..., C) final hidden states, in the compute dtype.
        kernel: (C, V) the output projection (the transposed token embeddings when tied).
        targets: (...) integer token ids.
        sample_weight: (...) token weights, or None.
        chunk_size: tokens projected at once.
    """
    width = ops.shape(hidden)[-1]
    hidden = ops.reshape(hidden, (-1, width))
    targets = ops.reshape(ops.cast(targets, "int32"), (-1,))
    count = ops.shape(targets)[0]
    weights = (ops.ones((count,), "float32") if sample_weight is None
               else ops.reshape(ops.cast(sample_weight, "float32"), (-1,)))
    kernel = ops.cast(kernel, hidden.dtype)
    total = _summed_cross_entropy(hidden, kernel, targets, weights, chunk_size)
    return total / ops.cast(count, "float32")


def _chunks(count, chunk_size):
    """(number of chunks, tokens a chunk): the last chunk is moved back to end at `count`,
    and its tokens that the chunk before already counted get weight zero."""
    # a static count (JAX, or a known batch) keeps the shapes static
    size = min(chunk_size, count) if isinstance(count, int) else ops.minimum(chunk_size, count)
    return (count + size - 1) // size, size


def _chunk(hidden, targets, weights, i, size, count):
    first = ops.minimum(i * size, count - size)  # the last chunk moved back
    new = ops.cast(ops.arange(size) + first >= i * size, "float32")
    return (first,
            ops.slice(hidden, (first, 0), (size, ops.shape(hidden)[1])),
            ops.slice(targets, (first,), (size,)),
            ops.slice(weights, (first,), (size,)) * new)


def _summed_cross_entropy(hidden, kernel, targets, weights, chunk_size):
    count = ops.shape(targets)[0]
    chunks, size = _chunks(count, chunk_size)

    # The gradients are computed in the forward pass, chunk by chunk, while each chunk's
    # logits exist (as Liger-Kernel's fused linear cross-entropy does): the backward pass
    # only scales them, and no chunk is projected twice.
    @ops.custom_gradient
    def summed(hidden, kernel):
        def step(i, carry):
            total, d_hidden, d_kernel = carry
            first, h, t, w = _chunk(hidden, targets, weights, i, size, count)
            logits = ops.cast(ops.matmul(h, kernel), "float32")
            picked = ops.take_along_axis(logits, t[:, None], axis=1)[:, 0]
            total = total + ops.sum((ops.logsumexp(logits, axis=1) - picked) * w)
            # d loss / d logits = (softmax - one_hot(target)) * weight
            d_logits = ops.softmax(logits, axis=1) - ops.one_hot(t, ops.shape(kernel)[1],
                                                                 dtype="float32")
            d_logits = ops.cast(d_logits * w[:, None], hidden.dtype)
            rows = ops.slice(d_hidden, (first, 0), (size, ops.shape(hidden)[1]))
            d_h = ops.cast(ops.matmul(d_logits, ops.transpose(kernel)), "float32")
            d_hidden = ops.slice_update(d_hidden, (first, 0), rows + d_h)
            d_kernel = d_kernel + ops.cast(ops.matmul(ops.transpose(h), d_logits), "float32")
            return total, d_hidden, d_kernel

        total, d_hidden, d_kernel = ops.fori_loop(0, chunks, step, (
            ops.zeros((), "float32"), ops.zeros_like(hidden, "float32"),
            ops.zeros(ops.shape(kernel), "float32")))

        def backward(*upstream, **unused):  # TensorFlow also passes variables=
            (upstream,) = upstream
            return (ops.cast(d_hidden * upstream, hidden.dtype),
                    ops.cast(d_kernel * upstream, kernel.dtype))

        return total, backward

    return summed(hidden, kernel)
