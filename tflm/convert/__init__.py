"""Pretrained checkpoints: import from Hugging Face (config.json + model.safetensors) and
export back to it."""

from tflm.convert.huggingface import from_huggingface
from tflm.convert.huggingface_export import to_huggingface

__all__ = ["from_huggingface", "to_huggingface"]
