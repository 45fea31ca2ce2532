import pytest
import yaml

from tflm.training.config import DEFAULT_CONFIG, changes, load_config, resume_record, save_config


def test_the_default_config_spells_out_every_section():
    config = load_config()
    assert set(config) == {"model", "tokenizer", "data", "optimizer", "train", "output"}
    assert config["data"]["train"] == "tiny_shakespeare"
    assert config["train"]["max_minutes"] == 9.75
    assert load_config("shakespeare-char") == config == load_config(str(DEFAULT_CONFIG))


def test_overrides_are_parsed_as_yaml_and_floats():
    config = load_config(overrides=["optimizer.learning_rate=3e-4", "train.max_minutes=null",
                                    "output.sample_prompt=JULIET:", "model.num_layers=2",
                                    "train.jit_compile=false"])
    assert config["optimizer"]["learning_rate"] == 3e-4
    assert config["train"]["max_minutes"] is None
    assert config["output"]["sample_prompt"] == "JULIET:"
    assert config["model"]["num_layers"] == 2
    assert config["train"]["jit_compile"] is False


def test_unknown_keys_and_bad_overrides_are_errors():
    with pytest.raises(KeyError, match="Unknown config key 'optimizer.lr'; the keys there are: "
                                       "learning_rate, min_learning_rate"):
        load_config(overrides=["optimizer.lr=1"])
    with pytest.raises(KeyError, match="Unknown config section 'optimiser'"):
        load_config(overrides=["optimiser.learning_rate=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(overrides=["optimizer.learning_rate"])
    with pytest.raises(FileNotFoundError, match="No config file 'nope'.*shakespeare-char"):
        load_config("nope")


def test_a_config_file_must_have_every_key_and_no_other(tmp_path):
    config = load_config()
    del config["optimizer"]["beta_2"]
    save_config(config, tmp_path / "a.yaml")
    with pytest.raises(ValueError, match="lacks 'optimizer.beta_2'"):
        load_config(tmp_path / "a.yaml")
    config = load_config()
    config["data"]["shuffle_buffer"] = 10
    save_config(config, tmp_path / "b.yaml")
    with pytest.raises(ValueError, match="unknown key 'data.shuffle_buffer'"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("model: [1, 2")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "c.yaml")


def test_saved_config_reads_back_the_same(tmp_path):
    config = load_config(overrides=["optimizer.learning_rate=1e-3"])
    save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config
    assert load_config(tmp_path / "config.yaml") == config


def test_the_optimizer_section_holds_the_arguments_of_adamw():
    import inspect

    from tflm.training import adamw

    arguments = inspect.signature(adamw).parameters
    assert set(load_config()["optimizer"]) <= set(arguments)


def test_a_resume_record_keeps_what_a_resumed_run_may_not_change():
    config = load_config()
    record = resume_record(config)
    assert record["model.num_heads"] == 4 and record["data.seq_len"] == 128
    assert record["optimizer.learning_rate"] == 3e-3 and record["train.seed"] == 0
    for free in ("train.max_minutes", "train.max_steps", "train.verbose", "train.resume",
                 "output.dir", "output.checkpoint_every"):
        assert free not in record
    longer = load_config(overrides=["train.max_steps=9000", "output.log_every=1"])
    assert changes(record, resume_record(longer)) == []
    other = load_config(overrides=["data.seq_len=64", "model.num_kv_heads=2",
                                   "train.mixed_precision=mixed_bfloat16"])
    assert changes(record, resume_record(other)) == [
        "model.num_kv_heads: null -> 2", "data.seq_len: 128 -> 64",
        "train.mixed_precision: null -> mixed_bfloat16"]
    assert changes({"a": 1}, {"b": "x"}) == ["a: 1 -> (none)", "b: (none) -> x"]
