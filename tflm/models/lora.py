"""Low-rank adapters (LoRA) on the attention projections, on Keras' own `Dense.enable_lora`.

    enable_lora(model, rank=8)        # only the adapters (and a task's head) train
    model.fit(...)
    merged = merge_lora(model)        # adapters folded into the kernels, for export
"""

import tempfile
from pathlib import Path

import keras

from tflm.models.encoder import Encoder
from tflm.models.gpt import GPT


def enable_lora(model, rank, alpha=None):
    """Freeze `model` and add trainable rank-`rank` adapters to the query/key/value and
    output projections of every attention layer (`alpha / rank` scales them, Keras'
    convention; `alpha` defaults to `rank`).

    `model` is a GPT, an Encoder, or a task on an encoder (`Classifier`, `MaskedLM`),
    whose own head stays trainable. Enable LoRA before `compile`.
    """
    backbone = _backbone(model)
    if isinstance(backbone, GPT) and backbone.block != "transformer":
        raise ValueError("LoRA applies to attention projections; an LSTM GPT has none.")
    if not model.built:
        raise ValueError("Build the model (call it once) before enable_lora().")
    for variable in backbone.trainable_variables:
        variable.trainable = False
    for block in backbone.blocks:
        for dense in (block.attention.qkv, block.attention.output_projection):
            dense.enable_lora(rank, lora_alpha=alpha)


def merge_lora(model):
    """A copy of `model` with each adapter folded into its kernel: plain Dense layers,
    the same outputs. (Keras merges adapters when it saves a model.)"""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "merged.keras"
        model.save(path)
        return keras.saving.load_model(path, compile=False)


def _backbone(model):
    if isinstance(model, (GPT, Encoder)):
        return model
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, Encoder):
        return encoder
    raise TypeError(f"LoRA applies to a GPT, an Encoder or a task on one; got {type(model).__name__}.")
