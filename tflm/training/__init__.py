"""Training: strategy selection, optimizer and schedules, callbacks, checkpoints with exact
resume, configurations and `train()`, usable piece by piece with plain `model.compile` /
`model.fit`."""

from tflm.models.metrics import Perplexity
from tflm.training.callbacks import ProgressLogs, TensorBoard, TextSamples, TimeBudget
from tflm.training.checkpoints import CheckpointManager, Checkpointing
from tflm.training.config import load_config, save_config
from tflm.training.distribute import distribution_strategy
from tflm.training.optimizers import adamw, warmup_cosine
from tflm.training.trainer import train

__all__ = [
    "CheckpointManager",
    "Checkpointing",
    "Perplexity",
    "ProgressLogs",
    "TensorBoard",
    "TextSamples",
    "TimeBudget",
    "adamw",
    "distribution_strategy",
    "load_config",
    "save_config",
    "train",
    "warmup_cosine",
]
