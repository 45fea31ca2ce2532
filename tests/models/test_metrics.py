import numpy as np

from tests.helpers import cross_entropy, tiny_gpt, to_numpy
from tflm.models import Perplexity


def test_perplexity_is_exp_of_mean_token_cross_entropy_over_all_updates():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(2, 5, 7)).astype("float32") for _ in range(2)]
    labels = [rng.integers(0, 7, (2, 5)) for _ in range(2)]
    weights = np.ones((2, 5), "float32")
    weights[1, 3:] = 0.0
    metric = Perplexity()
    metric.update_state(labels[0], logits[0])
    metric.update_state(labels[1], logits[1], sample_weight=weights)
    losses = np.concatenate([
        cross_entropy(logits[0], labels[0]).ravel(),
        cross_entropy(logits[1], labels[1])[weights > 0],
    ])
    np.testing.assert_allclose(float(to_numpy(metric.result())), np.exp(losses.mean()), rtol=1e-5)
    metric.reset_state()
    metric.update_state(labels[0], logits[0])
    np.testing.assert_allclose(
        float(to_numpy(metric.result())), np.exp(cross_entropy(logits[0], labels[0]).mean()), rtol=1e-5
    )


def test_compile_defaults_report_loss_perplexity_and_accuracy():
    model = tiny_gpt(vocab_size=11, hidden_dim=16, intermediate_dim=32, max_sequence_length=8)
    model.compile()
    ids = np.random.default_rng(1).integers(0, 11, (32, 9)).astype("int32")
    inputs, labels = ids[:, :-1], ids[:, 1:]
    logs = model.evaluate(inputs, labels, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "perplexity", "token_accuracy"}
    logits = to_numpy(model(inputs)).astype("float64")
    np.testing.assert_allclose(logs["loss"], cross_entropy(logits, labels).mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["perplexity"], np.exp(logs["loss"]), rtol=1e-4)
    accuracy = (logits.argmax(-1) == labels).mean()
    assert 0 < accuracy < 1  # some tokens right, some wrong: the comparison can tell
    np.testing.assert_allclose(logs["token_accuracy"], accuracy, atol=1e-6)
