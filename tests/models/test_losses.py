import keras
import numpy as np
import pytest
from keras import ops

from tests.helpers import cross_entropy, tiny_gpt
from tflm.models.losses import chunked_token_cross_entropy


def value_and_gradients(loss, hidden, kernel):
    """loss(hidden, kernel) and its gradients, with the backend's own differentiation."""
    if keras.backend.backend() == "jax":
        import jax

        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(hidden, kernel)
        return np.asarray(value), [np.asarray(g) for g in grads]
    import tensorflow as tf

    hidden, kernel = tf.Variable(hidden), tf.Variable(kernel)
    with tf.GradientTape() as tape:
        value = loss(hidden, kernel)
    return value.numpy(), [g.numpy() for g in tape.gradient(value, [hidden, kernel])]


@pytest.mark.parametrize("chunk_size", [4, 5, 21, 64])  # dividing 21 tokens, not, all, more
@pytest.mark.parametrize("weighted", [False, True])
def test_the_chunked_loss_equals_keras_cross_entropy_on_the_logits(chunk_size, weighted):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 8)).astype("float32")
    kernel = rng.normal(size=(8, 11)).astype("float32")
    targets = rng.integers(0, 11, (3, 7))
    weights = rng.uniform(size=(3, 7)).astype("float32") if weighted else None
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    expected, expected_grads = value_and_gradients(
        lambda h, k: plain(targets, ops.matmul(h, k), sample_weight=weights), hidden, kernel)
    value, grads = value_and_gradients(
        lambda h, k: chunked_token_cross_entropy(h, k, targets, weights, chunk_size), hidden, kernel)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_chunked_loss_matches_a_numpy_cross_entropy():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(10, 4)).astype("float32")
    kernel = rng.normal(size=(4, 6)).astype("float32")
    targets = rng.integers(0, 6, 10)
    logits = hidden @ kernel
    expected = cross_entropy(logits, targets).mean()
    value = chunked_token_cross_entropy(hidden, kernel, targets, chunk_size=3)
    np.testing.assert_allclose(ops.convert_to_numpy(value), expected, rtol=1e-5)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_a_gpt_trained_with_the_chunked_loss_trains_as_with_the_plain_one(tie_embeddings):
    ids = np.random.default_rng(0).integers(0, 11, (12, 9)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    runs = []
    for loss_chunk_size in (None, 5):
        keras.utils.set_random_seed(0)
        model = tiny_gpt(tie_embeddings=tie_embeddings)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss_chunk_size=loss_chunk_size)
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                            validation_data=(x[:4], y[:4]))
        runs.append((model, history.history))
    (plain, plain_logs), (chunked, chunked_logs) = runs
    np.testing.assert_allclose(chunked_logs["loss"], plain_logs["loss"], rtol=1e-5)
    np.testing.assert_allclose(chunked_logs["val_perplexity"], plain_logs["val_perplexity"],
                               rtol=1e-5)
    assert "perplexity" not in chunked_logs  # training reports the loss alone
    assert plain_logs["loss"][1] < plain_logs["loss"][0]  # it learned: the gradients were not 0
    for a, b in zip(plain.get_weights(), chunked.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    # outside fit, the model returns logits as ever
    assert ops.shape(chunked(x[:2], training=False)) == (2, 8, 11)


def test_loss_chunk_size_refuses_another_loss_and_a_size_below_one():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="loss='auto'"):
        model.compile(loss="mse", loss_chunk_size=8)
    with pytest.raises(ValueError, match="at least 1"):
        model.compile(loss_chunk_size=0)
