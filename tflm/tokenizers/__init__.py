"""Tokenizers: text <-> token ids, usable in tf.data pipelines and exported graphs.

`ByteTokenizer` (the GPT default: any text, pure TensorFlow ops), `CharTokenizer`,
`BPETokenizer` (byte-level BPE; GPT-2's files load as they are) and `WordPieceTokenizer`
(BERT). All are keras-hub `Tokenizer` layers: `tokenizer(text)` gives ids,
`tokenizer.detokenize(ids)` gives text back, and each saves with the model it belongs to.
"""

from tflm.tokenizers.base import SPECIAL_TOKEN_NAMES, tokenize_batch
from tflm.tokenizers.bpe import BPETokenizer, train_bpe
from tflm.tokenizers.table import ByteTokenizer, CharTokenizer
from tflm.tokenizers.wordpiece import WordPieceTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "SPECIAL_TOKEN_NAMES",
    "WordPieceTokenizer",
    "tokenize_batch",
    "train_bpe",
]
