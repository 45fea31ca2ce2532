"""Models: `GPT` (decoder), `Encoder` (BERT-like) and the task models around an encoder;
`load(handle)` gives the model any handle names (`tflm.hub`)."""

from tflm.models.encoder import Encoder
from tflm.models.gpt import GPT
from tflm.models.lora import enable_lora, merge_lora
from tflm.models.metrics import Perplexity
from tflm.models.presets import ENCODER_PRESETS, GPT_PRESETS, load
from tflm.models.tasks import Classifier, MaskedLM

__all__ = [
    "Classifier", "ENCODER_PRESETS", "Encoder", "GPT", "GPT_PRESETS", "MaskedLM", "Perplexity",
    "enable_lora", "load", "merge_lora",
]
