import numpy as np
import pytest

from tflm.models import Classifier, Encoder, MaskedLM
from tests.helpers import (
    assert_model_round_trip,
    assert_overfits,
    run_model_test,
    tiny_encoder,
    to_numpy,
)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 23, size=(3, 8)).astype("int32")
    mask = np.ones((3, 8), bool)
    mask[1, 5:] = False
    mask[2, 3:] = False
    ids[~mask] = 0
    segments = np.zeros((3, 8), "int32")
    segments[0, 4:] = 1
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": segments}


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_padding_never_changes_real_positions(norm_position):
    encoder = tiny_encoder(norm_position=norm_position)
    inputs = batch()
    out = to_numpy(encoder(inputs)["sequence_output"])
    changed = {**inputs, "token_ids": np.where(inputs["padding_mask"], inputs["token_ids"], 7)}
    after = to_numpy(encoder(changed)["sequence_output"])
    mask = inputs["padding_mask"]
    np.testing.assert_allclose(out[mask], after[mask], atol=1e-5)
    # the padded row's real part equals the same tokens without padding
    alone = to_numpy(encoder({"token_ids": inputs["token_ids"][2:, :3]})["sequence_output"])
    np.testing.assert_allclose(out[2, :3], alone[0], atol=1e-5)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_model_checks(norm_position, tmp_path):
    # Shapes, serialization, `.keras` round trip with dropout in the config, one training
    # step, mixed precision.
    run_model_test(
        tiny_encoder,
        dict(norm_position=norm_position, dropout=0.1),
        batch(),
        expected_output_shape={"sequence_output": (3, 8, 16), "pooled_output": (3, 16)},
        tmp_path=tmp_path,
    )


def test_outputs_and_segments():
    encoder = tiny_encoder()
    inputs = batch()
    outputs = encoder(inputs)
    assert outputs["sequence_output"].shape == (3, 8, 16)
    assert outputs["pooled_output"].shape == (3, 16)
    other = to_numpy(encoder({**inputs, "segment_ids": 1 - inputs["segment_ids"]})["sequence_output"])
    assert not np.allclose(other, to_numpy(outputs["sequence_output"]))


def test_masked_lm_predicts_at_mask_positions(tmp_path):
    inputs = {**batch(), "mask_positions": np.array([[1, 2], [0, 4], [2, 1]], "int32")}
    # The checks' training step also shows the frozen [CLS] pooler is all MaskedLM leaves.
    run_model_test(MaskedLM, dict(encoder=tiny_encoder()), inputs, expected_output_shape=(3, 2, 23),
                   tmp_path=tmp_path, expected_output_dtype="float32")


def test_masked_lm_overfits():
    inputs = {**batch(), "mask_positions": np.array([[1, 2], [0, 4], [2, 1]], "int32")}
    labels = np.take_along_axis(inputs["token_ids"], inputs["mask_positions"], axis=1)
    assert_overfits(MaskedLM(tiny_encoder()), inputs, labels, epochs=60, learning_rate=1e-2)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_checks(pooling, tmp_path):
    # The training step moves every trainable weight: the [CLS] pooler trains exactly
    # when the classifier reads it.
    run_model_test(Classifier, dict(encoder=tiny_encoder(), num_classes=3, pooling=pooling),
                   batch(seed=1), expected_output_shape=(3, 3), tmp_path=tmp_path,
                   expected_output_dtype="float32")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_overfits_and_round_trips(pooling, tmp_path):
    model = Classifier(tiny_encoder(), num_classes=3, pooling=pooling, label_names=["a", "b", "c"])
    inputs = batch(seed=1)
    assert_overfits(model, inputs, np.array([0, 2, 1]), epochs=40, learning_rate=1e-2)
    restored = assert_model_round_trip(model, inputs, tmp_path)
    assert restored.label_names == ["a", "b", "c"]


def test_mean_pooling_averages_real_tokens_only():
    encoder = tiny_encoder()
    model = Classifier(encoder, num_classes=2, pooling="mean", dropout=0.0)
    inputs = batch()
    logits = to_numpy(model(inputs))
    hidden = to_numpy(encoder(inputs)["sequence_output"])
    mask = inputs["padding_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    expected = pooled @ to_numpy(model.head.kernel) + to_numpy(model.head.bias)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_only_the_pooling_in_use_trains(pooling):
    # Mean pooling leaves the [CLS] pooler out of the graph: it must not be trainable
    # (an optimizer would warn of its missing gradients).
    encoder = tiny_encoder()
    MaskedLM(encoder)  # pretraining freezes the pooler; a [CLS] classifier trains it again
    model = Classifier(encoder, num_classes=2, pooling=pooling)
    model(batch())
    trainable = {v.path for v in model.trainable_variables}
    pooler = {v.path for v in model.encoder.pooler.weights}
    assert pooler <= trainable if pooling == "cls" else not pooler & trainable


def test_masked_lm_does_not_train_the_unused_pooler():
    model = MaskedLM(tiny_encoder())
    inputs = {**batch(), "mask_positions": np.array([[1, 2]] * 3, "int32")}
    model(inputs)
    assert not {v.path for v in model.encoder.pooler.weights} & {
        v.path for v in model.trainable_variables}


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="Unknown preset 'bert-huge'"):
        Encoder.from_preset("bert-huge")
    with pytest.raises(ValueError, match="num_heads=5 must divide hidden_dim=16"):
        tiny_encoder(num_heads=5)
    with pytest.raises(ValueError, match="2 label names given for 3 classes"):
        Classifier(tiny_encoder(), num_classes=3, label_names=["a", "b"])
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        Classifier(tiny_encoder(), num_classes=3, pooling="max")
    with pytest.raises(ValueError, match="12 tokens but the encoder's context is 10"):
        tiny_encoder()(np.ones((1, 12), "int32"))
    with pytest.raises(ValueError, match="need 'token_ids'"):
        tiny_encoder()({"ids": np.ones((1, 4), "int32")})
