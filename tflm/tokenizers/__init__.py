"""Tokenizers: text <-> token ids, usable in tf.data pipelines and exported graphs.

`ByteTokenizer` (the GPT default: any text, pure TensorFlow ops), `CharTokenizer`,
`BPETokenizer` (byte-level BPE; GPT-2's files load as they are) and `WordPieceTokenizer`
(BERT). All are keras-hub `Tokenizer` layers: `tokenizer(text)` gives ids,
`tokenizer.detokenize(ids)` gives text back, and each saves with the model it belongs to.
`from_tokenizer_json` reads Hugging Face's tokenizer.json of a byte-level BPE model
(GPT-2, Llama 3, Qwen2, SmolLM) into a `BPETokenizer`; `to_tokenizer_json` writes one.
"""

from tflm.tokenizers.base import SPECIAL_TOKEN_NAMES, tokenize_batch
from tflm.tokenizers.bpe import BPETokenizer, train_bpe
from tflm.tokenizers.table import ByteTokenizer, CharTokenizer
from tflm.tokenizers.tokenizer_json import from_tokenizer_json, to_tokenizer_json
from tflm.tokenizers.wordpiece import WordPieceTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "SPECIAL_TOKEN_NAMES",
    "WordPieceTokenizer",
    "from_tokenizer_json",
    "to_tokenizer_json",
    "tokenize_batch",
    "train_bpe",
]
