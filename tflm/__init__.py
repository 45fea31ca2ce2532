"""tflm: build, train, sample from and export language models with Keras 3.

Layers and models use `keras.ops` only and run on the TensorFlow and JAX backends;
TensorFlow is imported only by the modules that need it (data, tokenizers, export).
"""

import os
import re
import sys

__version__ = "0.1.0"

__all__ = ["Classifier", "Encoder", "GPT", "MaskedLM", "layers", "models"]

# Imported on first use, so that `import tflm` does not import TensorFlow (PEP 562).
_SUBMODULES = ("convert", "data", "export", "generation", "tokenizers", "training")


def _starting_the_command():
    """True while `tflm ...` or `python -m tflm ...` starts: its parser answers --help and
    usage errors without importing Keras (and with it TensorFlow); `tflm.cli.main` imports
    the models before a command runs."""
    argv = getattr(sys, "argv", None) or [""]
    if argv[0] == "-m":  # runpy is finding the module `python -m` names
        command = getattr(sys, "orig_argv", [])
        return "-mtflm" in command or any(
            a == "-m" and b == "tflm" for a, b in zip(command, command[1:]))
    # the console script: bin/tflm (tflm.exe or tflm-script.py on Windows)
    return re.sub(r"(-script\.pyw?|\.exe)$", "", os.path.basename(argv[0])) == "tflm"


if not _starting_the_command():
    # Everywhere else `import tflm` registers the models with Keras, so that
    # `keras.saving.load_model` reads a tflm model after a bare `import tflm`.
    from tflm import layers, models
    from tflm.models import GPT, Classifier, Encoder, MaskedLM


def __getattr__(name):
    if name in _SUBMODULES or name in ("layers", "models"):
        import importlib

        return importlib.import_module(f"tflm.{name}")
    if name in ("Classifier", "Encoder", "GPT", "MaskedLM"):
        from tflm import models

        return getattr(models, name)
    raise AttributeError(f"module 'tflm' has no attribute {name!r}")
