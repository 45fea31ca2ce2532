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


def flatten(config, prefix=""):
    """"section.key" -> value, written out here rather than taken from the module under test."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def test_a_config_file_names_only_what_it_changes(tmp_path):
    (tmp_path / "my.yaml").write_text("data:\n  train: corpus.txt\ntrain:\n  max_steps: 100\n")
    config = flatten(load_config(tmp_path / "my.yaml"))
    default = flatten(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    assert set(config) == set(default)
    assert config.pop("data.train") == "corpus.txt" and config.pop("train.max_steps") == 100
    assert config == {k: v for k, v in default.items() if k not in ("data.train", "train.max_steps")}
    # an empty section or file changes nothing; overrides still apply after the file
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_config(tmp_path / "empty.yaml") == load_config()
    (tmp_path / "b.yaml").write_text("model:\ntrain:\n  seed: 3\n")
    assert load_config(tmp_path / "b.yaml", ["train.seed=4"])["train"]["seed"] == 4


def test_unknown_keys_in_a_config_file_are_errors_naming_the_valid_ones(tmp_path):
    (tmp_path / "a.yaml").write_text("data:\n  shuffle_buffer: 10\n")
    with pytest.raises(ValueError, match="unknown key 'data.shuffle_buffer'; the keys of section "
                                         "'data' are: train, validation_split, seq_len"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("optimiser:\n  learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown key 'optimiser'; the keys of a config are: "
                                         "model, tokenizer, data, optimizer, train, output"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("model: 3\n")
    with pytest.raises(ValueError, match="'model' must be a section"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("model: [1, 2")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "d.yaml")


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
    # a record written before a setting existed resumes when the setting is at its default
    assert changes({"a": 1}, {"a": 1, "c": None}) == []
    assert changes({"a": 1}, {"a": 1, "c": 2}) == ["c: (none) -> 2"]


def test_every_gpt_option_can_be_set_in_a_config():
    import inspect

    from tflm.models import GPT
    from tflm.training.trainer import build_model

    options = set(inspect.signature(GPT.__init__).parameters) - {
        "self", "vocab_size", "tokenizer", "kwargs"}
    assert options <= set(load_config()["model"])
    config = load_config(overrides=["model.sliding_window=16", "model.head_dim=32",
                                    "model.qkv_bias=true", "model.use_bias=false"])
    config["tokenizer"]["kind"] = "byte"
    model = build_model(config)
    attention = model.blocks[0].attention
    assert (attention.sliding_window, attention.head_dim, attention.qkv_bias) == (16, 32, True)


def test_tflm_train_runs_a_three_line_config_and_saves_it_resolved(tflm_train, tmp_path):
    import subprocess

    from tflm.data.corpora import tiny_shakespeare

    (tmp_path / "corpus.txt").write_text(tiny_shakespeare().read_text()[:20_000])
    (tmp_path / "my.yaml").write_text("data:\n  train: corpus.txt\ntrain: {max_steps: 6, eval_every: 3}\n")
    sizes = [o for o in tflm_train.SMALL if o.split("=")[0] not in ("train.max_steps", "train.eval_every")]
    args = tflm_train.args("run", *sizes)[: 4] + ["--config", "my.yaml"]
    for override in [*sizes, "output.dir=run"]:
        args += ["--set", override]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trained to step 6" in result.stdout
    saved = flatten(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()))
    default = flatten(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    assert set(saved) == set(default)
    assert saved["data.train"] == "corpus.txt" and saved["train.max_steps"] == 6
    assert saved["model.num_layers"] == 1 and saved["optimizer.beta_2"] == default["optimizer.beta_2"]
    # a misspelt key stops the command, naming the valid ones
    (tmp_path / "bad.yaml").write_text("train:\n  max_step: 6\n")
    result = subprocess.run([*args[:4], "--config", "bad.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "unknown key 'train.max_step'" in result.stderr
    assert "max_minutes, max_steps, eval_every" in result.stderr
