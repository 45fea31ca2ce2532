"""save_to_preset writes a directory that from_preset and tflm.models.load read back as the
same model; preset names are architectures. Backend-neutral: no tokenizers here (they run on
TensorFlow; tests/test_hub.py saves models with their tokenizers)."""

import json
import os

import numpy as np
import pytest

import tflm
from tests.helpers import as_json, random_ids, tiny_encoder, tiny_gpt, to_numpy
from tflm.models import GPT, Classifier, Encoder

ENCODER_INPUTS = {"token_ids": random_ids((3, 7), 23, seed=1),
                  "padding_mask": np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], bool)}


def built(kind):
    """A tiny model of `kind`, built, its input and its output on that input."""
    if kind in ("gpt", "lstm"):
        model = tiny_gpt() if kind == "gpt" else tiny_gpt(block="lstm", position="sinusoidal")
        inputs = random_ids((2, 8), 11)
    elif kind == "encoder":
        model, inputs = tiny_encoder(), ENCODER_INPUTS
    else:
        model, inputs = Classifier(tiny_encoder(), 3, pooling="mean", label_names=list("abc")), \
            ENCODER_INPUTS
    outputs = model(inputs)
    return model, inputs, outputs


def assert_same_outputs(a, b):
    if isinstance(a, dict):
        for key in a:
            np.testing.assert_array_equal(to_numpy(a[key]), to_numpy(b[key]))
    else:
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("kind", ["gpt", "lstm", "encoder", "classifier"])
def test_a_saved_preset_loads_back_as_the_same_model(kind, tmp_path, seeded):
    model, inputs, outputs = built(kind)
    model.save_to_preset(tmp_path / "preset")
    assert sorted(os.listdir(tmp_path / "preset")) == ["config.json", "metadata.json",
                                                       "model.weights.h5"]
    assert os.listdir(tmp_path) == ["preset"]  # no temporary folder left behind
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["tflm_version"] == tflm.__version__
    assert metadata["class_name"] == type(model).__name__
    assert metadata["parameter_count"] == model.count_params()

    for loaded in (type(model).from_preset(tmp_path / "preset"),
                   tflm.models.load(str(tmp_path / "preset"))):
        assert type(loaded) is type(model)
        assert as_json(loaded.get_config()) == as_json(model.get_config())
        assert_same_outputs(loaded(inputs), outputs)


@pytest.mark.backend_independent
def test_a_directory_that_holds_files_is_replaced_only_with_overwrite(tmp_path, seeded):
    first, ids, first_logits = built("gpt")
    second, _, second_logits = built("gpt")
    assert not np.array_equal(to_numpy(first_logits), to_numpy(second_logits))
    directory = tmp_path / "preset"
    first.save_to_preset(directory)
    with pytest.raises(FileExistsError, match="exists and is not empty.*overwrite=True"):
        second.save_to_preset(directory)
    assert_same_outputs(GPT.from_preset(directory)(ids), first_logits)
    second.save_to_preset(directory, overwrite=True)
    assert_same_outputs(GPT.from_preset(directory)(ids), second_logits)
    assert os.listdir(tmp_path) == ["preset"]
    (tmp_path / "empty").mkdir()  # an empty directory is no one's preset
    first.save_to_preset(tmp_path / "empty")
    assert_same_outputs(GPT.from_preset(tmp_path / "empty")(ids), first_logits)


@pytest.mark.backend_independent
def test_a_save_that_fails_leaves_the_directory_as_it_was(tmp_path, seeded, monkeypatch):
    first, ids, first_logits = built("gpt")
    second, _, _ = built("gpt")
    first.save_to_preset(tmp_path / "preset")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(second, "save_weights", fail)
    for directory, overwrite in ((tmp_path / "preset", True), (tmp_path / "new", False)):
        with pytest.raises(OSError, match="disk full"):
            second.save_to_preset(directory, overwrite=overwrite)
    assert os.listdir(tmp_path) == ["preset"]  # nothing new, nothing temporary
    assert_same_outputs(GPT.from_preset(tmp_path / "preset")(ids), first_logits)


@pytest.mark.backend_independent
def test_an_unbuilt_model_or_a_file_in_the_way_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no weights yet"):
        tiny_gpt().save_to_preset(tmp_path / "preset")
    (tmp_path / "file").write_text("")
    model, _, _ = built("gpt")
    with pytest.raises(FileExistsError, match="is a file"):
        model.save_to_preset(tmp_path / "file", overwrite=True)


@pytest.mark.backend_independent
def test_preset_names_are_architectures_and_errors_point_to_the_weights():
    from tflm import hub

    model = tflm.models.load("bert-tiny")
    assert isinstance(model, Encoder) and model.num_layers == 2
    assert isinstance(tflm.models.load("shakespeare-char", tokenizer=None), GPT)
    with pytest.raises(ValueError, match=r"Unknown preset 'gpt2'; available presets: .*"
                                         r"hf://openai-community/gpt2\."):
        GPT.from_preset("gpt2")
    with pytest.raises(ValueError, match=r"'gpt2-124m' is a preset of GPT: an architecture with "
                                         r"fresh weights.*hf://openai-community/gpt2\."):
        hub.load("gpt2-124m", pretrained=True)  # what every command that needs weights does
    with pytest.raises(FileNotFoundError, match=r"No model at 'someone/model'.*hf://someone/model"):
        tflm.models.load("someone/model")
    with pytest.raises(FileNotFoundError, match="No pretrained model at 'missing.keras'"):
        hub.load("missing.keras", pretrained=True)


@pytest.mark.backend_independent
def test_overrides_apply_to_a_loaded_model_when_the_weights_still_fit(tmp_path, seeded):
    model, ids, logits = built("gpt")
    model.save_to_preset(tmp_path / "preset")
    loaded = GPT.from_preset(tmp_path / "preset", dropout=0.5, remat=True)
    assert loaded.dropout == 0.5 and loaded.remat
    assert_same_outputs(loaded(ids), logits)  # dropout is off at inference
    with pytest.raises(ValueError, match=r"override\(s\) \['num_layers'\] change the shapes"):
        GPT.from_preset(tmp_path / "preset", num_layers=2)
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['widht'\]"):
        GPT.from_preset(tmp_path / "preset", widht=3)


@pytest.mark.backend_independent
def test_each_class_takes_what_fits_it(tmp_path, seeded):
    classifier, inputs, logits = built("classifier")
    classifier.save_to_preset(tmp_path / "classifier")
    classifier.encoder.save_to_preset(tmp_path / "encoder")
    classifier.save(tmp_path / "classifier.keras")

    # a Classifier saved whole comes back whole, from a preset or a .keras file
    for handle in (tmp_path / "classifier", tmp_path / "classifier.keras"):
        again = Classifier.from_preset(handle)
        assert again.label_names == ["a", "b", "c"]
        assert_same_outputs(again(inputs), logits)
    with pytest.raises(ValueError, match="holds a whole Classifier"):
        Classifier.from_preset(tmp_path / "classifier", num_classes=5)

    # an Encoder, alone or inside a task, gets a new head
    encoder_output = classifier.encoder(inputs)["sequence_output"]
    for handle in (tmp_path / "encoder", tmp_path / "classifier.keras"):
        encoder = Encoder.from_preset(handle)
        assert_same_outputs(encoder(inputs)["sequence_output"], encoder_output)
    fresh = Classifier.from_preset(tmp_path / "encoder", num_classes=5, pooling="cls")
    assert fresh.num_classes == 5 and fresh.built
    assert_same_outputs(fresh.encoder(inputs)["sequence_output"], encoder_output)
    assert tuple(fresh(inputs).shape) == (3, 5)
    assert Classifier.from_preset("bert-tiny", num_classes=2).encoder.num_layers == 2
    with pytest.raises(ValueError, match="holds an encoder: give num_classes"):
        Classifier.from_preset(tmp_path / "encoder")
    with pytest.raises(TypeError, match="holds a model of class Encoder; GPT was expected"):
        GPT.from_preset(tmp_path / "encoder")


@pytest.mark.parametrize("load", [
    lambda: GPT.from_preset("shakespeare-char", tokenizer=None),  # no tokenizer: JAX runs these
    lambda: GPT.from_preset("shakespeare-char-lstm", tokenizer=None),
    lambda: tflm.models.load("shakespeare-char", tokenizer=None),
    lambda: Encoder.from_preset("bert-tiny"),
    lambda: Classifier.from_preset("bert-tiny", num_classes=2),
])
@pytest.mark.backend_independent
def test_a_preset_comes_built(load):
    model = load()
    assert model.built and len(model.weights) > 0
    count = model.count_params()
    # building again, as callers do before they knew presets came built, keeps the weights
    model.build((None, 16) if isinstance(model, GPT) else
                {"token_ids": (None, 16), "padding_mask": (None, 16)})
    assert model.count_params() == count
