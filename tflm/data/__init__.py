"""tf.data pipelines: read -> tokenize -> pack -> shuffle -> batch -> prefetch.

`lm_dataset` for GPT training, `mlm_dataset` for masked-LM pretraining of an encoder,
`classification_dataset` for labelled text; `corpora` holds the embedded corpus.
"""

from tflm.data import corpora
from tflm.data.classification import classification_dataset
from tflm.data.language_modeling import lm_dataset, mlm_dataset, token_ids
from tflm.data.sources import token_stream

__all__ = [
    "classification_dataset",
    "corpora",
    "lm_dataset",
    "mlm_dataset",
    "token_ids",
    "token_stream",
]
