"""tflm: build, train, sample from and export language models with Keras 3.

Layers and models use `keras.ops` only and run on the TensorFlow and JAX backends;
TensorFlow is imported only by the modules that need it (data, tokenizers, export).
"""

__version__ = "0.1.0"

from tflm import layers, models
from tflm.models import GPT, Classifier, Encoder, MaskedLM

__all__ = ["Classifier", "Encoder", "GPT", "MaskedLM", "layers", "models"]

# Imported on first use, so that `import tflm` does not import TensorFlow (PEP 562).
_SUBMODULES = ("convert", "data", "export", "generation", "tokenizers", "training")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"tflm.{name}")
    raise AttributeError(f"module 'tflm' has no attribute {name!r}")
