"""Import of pretrained checkpoints (Hugging Face config.json + model.safetensors)."""

from tflm.convert.huggingface import from_huggingface

__all__ = ["from_huggingface"]
