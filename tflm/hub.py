"""Model handles: one resolver for every model class and every command that takes a model.

A handle is tried as, in this order:

1. a built-in preset name (`GPT_PRESETS`, `ENCODER_PRESETS`): an architecture with fresh
   weights, never a checkpoint (write `./name` for a local directory of that name);
2. `hf://owner/name[@revision]`: a Hugging Face Hub repository, downloaded by
   `huggingface_hub` into its cache (HF_HUB_CACHE; HF_TOKEN, HF_HUB_OFFLINE, resumed
   downloads and progress bars are its own), then read as the local directory it becomes;
3. a local path: a `.keras` file; a tflm preset directory (written by `save_to_preset`,
   recognised by its metadata.json); a Hugging Face model directory (config.json and
   model.safetensors), imported with `tflm.convert.from_huggingface`.

A tflm preset directory holds:

    config.json         the model's Keras config (its class, get_config(), the tokenizer's config)
    model.weights.h5    the weights (`model.save_weights`)
    assets/tokenizer/   the tokenizer's files, when it has any (a BPE vocabulary and merges)
    metadata.json       tflm and Keras versions, the model's class and parameter count

Example:
>>> model = tflm.models.load("hf://openai-community/gpt2")       # a GPT with GPT-2's tokenizer
>>> model.save_to_preset("gpt2-copy")
>>> tflm.GPT.from_preset("gpt2-copy")                             # the same model again
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import keras

from tflm import __version__

HF_SCHEME = "hf://"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
TOKENIZER_ASSETS = "assets/tokenizer"

# What a download fetches from a repository: a Hugging Face model's config, safetensors
# weights (one file or shards) and tokenizer files, or a tflm preset. Top-level files only
# (fnmatch's * would also match ONNX or other exports in subfolders), so no extra weights.
HUB_FILES = [
    "config.json", "generation_config.json",
    "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
    METADATA_FILE, WEIGHTS_FILE, f"{TOKENIZER_ASSETS}/*",
]


def load(handle, cls=None, *, pretrained=False, **overrides):
    """The model `handle` names, built (see the module's docstring for handles).

    Args:
        handle: a preset name, `hf://owner/name[@revision]`, or a path to a `.keras` file,
            a tflm preset directory or a Hugging Face model directory.
        cls: the class expected (`GPT`, `Encoder`); an `Encoder` is also taken from a task
            model (`Classifier`, `MaskedLM`). None: whatever the handle holds.
        pretrained: the caller needs trained weights, so a preset name (an architecture)
            is an error that says where the weights are.
        **overrides: configuration values to change: any of a preset's; for a loaded
            `GPT` or `Encoder`, those that keep the weights' shapes (dropout, dtype, remat).
    """
    handle = os.fspath(handle)
    preset_class = _preset_class(handle, cls)
    if preset_class is not None and not pretrained:
        from tflm.models.presets import resolve_preset

        model = preset_class(**resolve_preset(preset_class.presets, handle, overrides))
        model.build((None, None))  # weights now, as a loaded model has them (keras-hub's presets)
        return model
    model = _of_class(_read(locate(handle, cls, pretrained), handle), cls, handle)
    return _with_overrides(model, overrides, handle) if overrides else model


def locate(handle, cls=None, pretrained=True):
    """The local file or directory of a handle that holds weights: an `hf://` handle is
    downloaded first. A preset name or a path that does not exist is an error naming it."""
    handle = os.fspath(handle)
    if handle.startswith(HF_SCHEME):
        return download(handle)
    path = Path(handle).expanduser()
    if path.exists():
        return path
    preset_class = _preset_class(handle, None)
    if preset_class is not None and (pretrained or cls is None):
        raise ValueError(
            f"{handle!r} is a preset of {preset_class.__name__}: an architecture with fresh "
            f"weights, not a checkpoint.{_hub_hint(handle)}"
        )
    if preset_class is not None:
        raise ValueError(f"{handle!r} is a preset of {preset_class.__name__}; the presets of "
                         f"{cls.__name__} are {sorted(cls.presets)}.")
    raise _unknown(handle, cls, pretrained)


def _preset_class(handle, cls):
    """The class whose built-in presets name `handle` (among `cls`'s, or GPT's and Encoder's)."""
    from tflm.models import GPT, Encoder

    classes = [cls] if getattr(cls, "presets", None) else [GPT, Encoder]
    return next((c for c in classes if handle in c.presets), None)


def _hub_hint(handle):
    from tflm.models.presets import HUB_CHECKPOINTS

    if handle in HUB_CHECKPOINTS:
        return f" For pretrained weights, use {HUB_CHECKPOINTS[handle]}."
    return ""


def _unknown(handle, cls, pretrained):
    """The error for a handle that is no preset, hf:// handle or existing path."""
    if "/" in handle or os.sep in handle or Path(handle).suffix:
        noun = "pretrained model" if pretrained else "model"
        error = FileNotFoundError(f"No {noun} at {handle!r}: no such file or directory.")
        if re.fullmatch(r"[\w.-]+/[\w.-]+", handle):
            error.args = (f"{error.args[0]} For the Hugging Face Hub repository, write "
                          f"{HF_SCHEME}{handle}.",)
        return error
    from tflm.models import GPT, Encoder

    classes = [cls] if getattr(cls, "presets", None) else [GPT, Encoder]
    names = sorted(name for c in classes for name in c.presets)
    return ValueError(
        f"Unknown preset {handle!r}; available presets: {names} (architectures with fresh "
        f"weights). A handle is also a .keras file, a directory, or "
        f"{HF_SCHEME}owner/name[@revision] for the Hugging Face Hub.{_hub_hint(handle)}"
    )


def _read(path, handle):
    """The model stored at the local `path`: a .keras file, a tflm preset or a Hugging Face
    model directory."""
    if path.is_file():
        if path.suffix != ".keras":
            raise ValueError(f"{handle} is a file but not a .keras model archive.")
        return keras.saving.load_model(path, compile=False)  # tflm's classes are registered
    if (path / METADATA_FILE).is_file():
        return _load_preset(path)
    if (path / CONFIG_FILE).is_file():
        from tflm.convert import from_huggingface

        return from_huggingface(path)
    raise ValueError(
        f"{handle} is a directory but neither a tflm preset (no {METADATA_FILE}) nor a "
        f"Hugging Face model (no {CONFIG_FILE})."
    )


def _of_class(model, cls, handle):
    if cls is None or isinstance(model, cls):
        return model
    encoder = getattr(model, "encoder", None)  # a task model's encoder
    if isinstance(encoder, cls):
        return encoder
    raise TypeError(f"{handle} holds a model of class {type(model).__name__}; {cls.__name__} "
                    "was expected.")


def _with_overrides(model, overrides, handle):
    """`model` rebuilt with `overrides` in its configuration, keeping its weights and
    tokenizer (a second copy of the weights exists while it is rebuilt)."""
    from tflm.models.base import Backbone
    from tflm.models.presets import LAYER_ARGUMENTS

    if not isinstance(model, Backbone):
        raise ValueError(f"{handle} holds a model of class {type(model).__name__}; "
                         "configuration overrides apply to a GPT or an Encoder.")
    config = model.get_config()
    unknown = set(overrides) - set(config) - LAYER_ARGUMENTS
    if unknown:
        raise ValueError(f"Unknown override(s) {sorted(unknown)} for {handle}; its "
                         f"configuration's keys are {sorted(config)}.")
    rebuilt = type(model).from_config({**config, "tokenizer": model.tokenizer, **overrides})
    rebuilt.build_from_config(model.get_build_config())
    try:
        rebuilt.set_weights(model.get_weights())
    except ValueError as error:
        raise ValueError(f"The override(s) {sorted(overrides)} change the shapes of the "
                         f"weights of {handle}: {error}") from None
    return rebuilt


# -- tflm presets ---------------------------------------------------------------------------


def save_preset(model, directory, overwrite=False):
    """Write `model` (a built GPT, Encoder or task model) as a tflm preset `directory`.

    The preset is written into a temporary folder beside `directory` and renamed into
    place, so `directory` never holds half of one. A `directory` that exists and is not
    empty is an error unless `overwrite`, which replaces it (keras-hub writes into an
    existing directory instead; mixing the files of two models would make neither).
    """
    directory = Path(directory).expanduser()
    if not model.built:
        raise ValueError(f"This {type(model).__name__} has no weights yet: build it (or call "
                         "it on a batch) before saving it.")
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file, not a directory.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty; save into a new "
                              "directory, or pass overwrite=True to replace it.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    try:
        config = keras.saving.serialize_keras_object(model)
        config.pop("compile_config", None)  # a preset is a model; whoever loads it compiles
        (temporary / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        model.save_weights(temporary / WEIGHTS_FILE)
        tokenizer = model.tokenizer
        if hasattr(tokenizer, "save_assets"):
            (temporary / TOKENIZER_ASSETS).mkdir(parents=True)
            tokenizer.save_assets(str(temporary / TOKENIZER_ASSETS))
        metadata = {
            "tflm_version": __version__,
            "keras_version": keras.__version__,
            "class_name": type(model).__name__,
            "parameter_count": model.count_params(),
        }
        (temporary / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        if directory.exists():
            old = temporary.with_name(temporary.name + "-replaced")
            directory.rename(old)
            temporary.rename(directory)
            shutil.rmtree(old)
        else:
            temporary.rename(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory


def _load_preset(directory):
    from tflm.models.attached_tokenizer import check_tokenizer

    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"The tflm preset {directory} has no {name}.")
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = keras.saving.deserialize_keras_object(config)  # built as its build_config says
    model.load_weights(directory / WEIGHTS_FILE)
    tokenizer = model.tokenizer
    if hasattr(tokenizer, "load_assets"):
        tokenizer.load_assets(str(directory / TOKENIZER_ASSETS))
        backbone = getattr(model, "encoder", model)
        check_tokenizer(tokenizer, backbone.vocab_size)  # now that its vocabulary is there
    return model


# -- the Hugging Face Hub -------------------------------------------------------------------


def download(handle):
    """The local directory of `hf://owner/name[@revision]` in huggingface_hub's cache,
    downloading what it lacks (the `HUB_FILES` of the repository's root).

    A repository, revision or file that does not exist is a `FileNotFoundError` naming it.
    """
    repo_id, _, revision = handle[len(HF_SCHEME):].partition("@")
    revision = revision or None
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise ImportError("hf:// handles need huggingface_hub: "
                          "pip install huggingface_hub") from None

    where = f"{handle}: the repository {repo_id!r}"
    try:
        path = Path(huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_FILES, library_name="tflm",
            library_version=__version__,
        ))
    except errors.HFValidationError as error:
        raise ValueError(f"{handle} is not hf://owner/name[@revision]: {error}") from None
    except errors.GatedRepoError:
        raise FileNotFoundError(
            f"{where} is gated: accept its terms at https://huggingface.co/{repo_id}, then "
            "log in (`hf auth login`) or set HF_TOKEN.") from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{where} does not exist on the Hugging Face Hub, or it is private and no token "
            "with access to it is set (HF_TOKEN).") from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(
            f"{where} has no revision {revision!r} (a branch, tag or commit hash).") from None
    except errors.LocalEntryNotFoundError as error:
        raise _not_cached(handle, repo_id, revision, error) from None
    return _check_download(path, handle)


def _not_cached(handle, repo_id, revision, error):
    """The Hub could not be asked (offline, or unreachable) and the cache lacks `repo_id`
    or its `revision`: which of the two."""
    from huggingface_hub import constants

    reason = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
              else f"the Hugging Face Hub cannot be reached ({error})")
    cached = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    if not cached.is_dir():
        return FileNotFoundError(
            f"{handle}: the repository {repo_id!r} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {reason}.")
    branches = sorted(str(p.relative_to(cached / "refs")) for p in cached.glob("refs/**/*")
                      if p.is_file())
    revisions = branches + sorted(p.name for p in cached.glob("snapshots/*"))
    revision = revision or "main"
    if revision in revisions:  # known, but its snapshot lacks files the Hub listed
        return FileNotFoundError(f"{handle}: the cached copy is incomplete and {reason}: {error}")
    return FileNotFoundError(
        f"{handle}: the cached repository {repo_id!r} has no revision {revision!r} "
        f"(cached: {', '.join(revisions) or 'none'}) and {reason}.")


def _check_download(path, handle):
    """`path` when it holds a model tflm reads; otherwise an error naming the missing file."""
    if (path / METADATA_FILE).is_file():
        needed = [CONFIG_FILE, WEIGHTS_FILE]
    else:
        sharded = (path / "model.safetensors.index.json").is_file()
        needed = [CONFIG_FILE] + ([] if sharded else ["model.safetensors"])
    for name in needed:
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{handle} (commit {path.name}) has no {name}; tflm reads a Hugging Face "
                "model's config.json and safetensors weights (not pytorch_model.bin), or a "
                "tflm preset.")
    return path
