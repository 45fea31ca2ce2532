"""Training configurations: YAML files with every value spelled out, plus `--set` overrides.

The files live in the repository's configs/ (shipped in the package as tflm/configs).
A configuration is plain data; `tflm.training.train(config)` reads it.
"""

import copy
import json
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "shakespeare-char.yaml"

# What a resumed run may change: how long it trains, what it measures and logs, how its
# steps are compiled. Nothing a checkpoint holds depends on these; every other value is
# recorded with each checkpoint, and a resume with another one stops (see `changes`).
# A section's name stands for all its keys.
RESUMABLE_CHANGES = frozenset({
    "train.max_minutes", "train.max_steps", "train.eval_batches", "train.jit_compile",
    "train.verbose", "train.resume", "model.remat", "output",
})


def config_path(name):
    """A config file: a path, or the name of one in configs/ ("shakespeare-char")."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"No config file {name!r} (the configs shipped with tflm: {known}).")


def load_config(path=None, overrides=()):
    """The configuration in `path` (default: configs/shakespeare-char.yaml) with
    `overrides` ("section.key=value" strings, values in YAML syntax) applied.

    A config must spell out every key of the default one and no other: a missing key
    or a misspelt override is an error that names it.
    """
    path = DEFAULT_CONFIG if path is None else config_path(path)
    config = _read(path)
    _check_keys(config, _read(DEFAULT_CONFIG), str(path))
    for override in overrides:
        set_value(config, override)
    return config


def set_value(config, assignment):
    """Apply one "section.key=value" override to `config` in place."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"An override is section.key=value; got {assignment!r}.")
    *sections, name = key.strip().split(".")
    node = config
    for i, section in enumerate(sections):
        if not isinstance(node.get(section), dict):
            raise KeyError(f"Unknown config section {'.'.join(sections[: i + 1])!r}.")
        node = node[section]
    if name not in node:
        raise KeyError(
            f"Unknown config key {key.strip()!r}; the keys there are: {', '.join(node)}."
        )
    node[name] = _parse(text.strip(), node[name])


def save_config(config, path):
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))


def resume_record(config):
    """`{"section.key": value}` of every value of `config` that a resumed run must keep."""
    return {key: value for key, value in _flatten(config).items()
            if key not in RESUMABLE_CHANGES and key.split(".")[0] not in RESUMABLE_CHANGES}


def changes(old, new):
    """`"key: old -> new"` for each key of two records whose values differ."""
    missing = object()

    def show(value):
        if value is missing:
            return "(none)"
        return value if isinstance(value, str) else json.dumps(value)  # null, true, 0.003

    lines = []
    for key in dict.fromkeys([*old, *new]):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            lines.append(f"{key}: {show(before)} -> {show(after)}")
    return lines


def _flatten(config, prefix=""):
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _parse(text, current):
    value = yaml.safe_load(text) if text else None
    if isinstance(current, str) and value is not None:
        return text  # a text setting stays text ("JULIET:" would read as a mapping)
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _read(path):
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of sections; got {type(config).__name__}.")
    return copy.deepcopy(config)


def _check_keys(config, reference, where, prefix=""):
    for key, value in reference.items():
        name = prefix + key
        if key not in config:
            raise ValueError(f"{where} lacks {name!r} (configs/shakespeare-char.yaml has every key).")
        if isinstance(value, dict):
            if not isinstance(config[key], dict):
                raise ValueError(f"{where}: {name!r} must be a section.")
            _check_keys(config[key], value, where, name + ".")
    for key in config:
        if key not in reference:
            raise ValueError(f"{where} has an unknown key {prefix + key!r}.")
