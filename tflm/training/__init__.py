"""Training: optimizer and schedules, metrics and configuration, usable piece by piece
with plain `model.compile` / `model.fit`."""

from tflm.models.metrics import Perplexity
from tflm.training.callbacks import TimeBudget
from tflm.training.optimizers import adamw, warmup_cosine

__all__ = ["Perplexity", "TimeBudget", "adamw", "warmup_cosine"]
