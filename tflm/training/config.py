"""Training configurations: YAML files merged over the default, plus `--set` overrides.

The default (configs/shakespeare-char.yaml, shipped in the package as tflm/configs) spells
out every value; a user's file names only what it changes. A configuration is plain data;
`tflm.training.train(config)` reads it.
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
    """The default configuration (configs/shakespeare-char.yaml) with the file `path`
    merged over it, section by section, then `overrides` ("section.key=value" strings,
    values in YAML syntax) applied.

    A file names only the values it changes:

    ```yaml
    data:
      train: my_corpus.txt
    train:
      max_steps: 2000
    ```

    An unknown section or key, in the file or an override, is an error naming the valid ones.
    """
    config = _read(DEFAULT_CONFIG)
    if path is not None:
        path = config_path(path)
        config = merge_config(_read(path, allow_empty=True), config, where=str(path))
    for override in overrides:
        set_value(config, override)
    return config


def merge_config(config, default=None, where="the config"):
    """A copy of `default` (the default configuration when None) with the values of the
    partial configuration `config` in place of its own. Sections merge key by key."""
    merged = copy.deepcopy(_read(DEFAULT_CONFIG) if default is None else default)
    _merge(merged, config or {}, where)
    return merged


def _merge(into, config, where, prefix=""):
    for key, value in config.items():
        name = prefix + str(key)
        if key not in into:
            place = f"section {prefix[:-1]!r}" if prefix else "a config"
            raise ValueError(f"{where} has an unknown key {name!r}; the keys of {place} are: "
                             f"{', '.join(into)}.")
        if isinstance(into[key], dict):
            if value is None:  # a section left empty (only comments) changes nothing
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {name!r} must be a section (a mapping of keys "
                                 f"{', '.join(into[key])}); got {value!r}.")
            _merge(into[key], value, where, name + ".")
        else:
            into[key] = copy.deepcopy(value)


def set_value(config, assignment):
    """Apply one "section.key=value" override to `config` in place."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"An override is section.key=value; got {assignment!r}.")
    *sections, name = key.strip().split(".")
    node = config
    for i, section in enumerate(sections):
        if not isinstance(node.get(section), dict):
            known = ", ".join(k for k, v in node.items() if isinstance(v, dict))
            raise KeyError(f"Unknown config section {'.'.join(sections[: i + 1])!r}; the "
                           f"sections there are: {known}.")
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
        if before is missing and after is None:
            continue  # a setting added since the old record was written, at its default
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


def _read(path, allow_empty=False):
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if config is None and allow_empty:  # an empty file (or only comments) changes nothing
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of sections; got {type(config).__name__}.")
    return config
