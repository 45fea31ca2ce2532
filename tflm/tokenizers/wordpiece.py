"""WordPiece (BERT's scheme) on keras-hub's WordPieceTokenizer (tensorflow-text underneath)."""

import keras
import keras_hub
import tensorflow as tf

from tflm.tokenizers.base import SpecialTokens


@keras.saving.register_keras_serializable(package="tflm")
class WordPieceTokenizer(SpecialTokens, keras_hub.tokenizers.WordPieceTokenizer):
    """WordPiece from a BERT `vocab.txt` (a path or a list of tokens), or trained here.

    BERT's special tokens map to the common names: bos = [CLS], eos = [SEP], pad = [PAD],
    mask = [MASK], unk = [UNK]. The vocabulary file is saved inside `.keras` archives.

    Example:
    >>> tokenizer = WordPieceTokenizer("minilm/vocab.txt", lowercase=True)
    >>> tokenizer = WordPieceTokenizer.train(texts, vocabulary_size=8000)
    """

    def __init__(
        self,
        vocabulary=None,
        lowercase=True,
        bos_token="[CLS]",
        eos_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        **kwargs,
    ):
        self._set_special_tokens(bos_token, eos_token, pad_token, mask_token, unk_token)
        kwargs.pop("oov_token", None)
        kwargs.pop("special_tokens", None)
        super().__init__(
            vocabulary=vocabulary,
            lowercase=lowercase,
            oov_token=unk_token,
            special_tokens=self.special_tokens_list(),
            **kwargs,
        )
        if self.vocabulary is not None:
            self._check_special_tokens_in(self.vocabulary, "WordPiece")

    @classmethod
    def train(cls, corpus, vocabulary_size, lowercase=True, **special_tokens):
        """Train on `corpus` (a string, an iterable of strings or a tf.data.Dataset of strings)."""
        tokenizer = cls(lowercase=lowercase, **special_tokens)
        data = corpus
        if not isinstance(corpus, tf.data.Dataset):  # (a list would be read as file names)
            texts = [corpus] if isinstance(corpus, str) else list(corpus)
            if not any(t.strip() for t in texts):
                raise ValueError("Cannot train WordPiece on an empty corpus.")
            data = tf.data.Dataset.from_tensor_slices(texts).batch(1024)
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            data,
            vocabulary_size,
            lowercase=lowercase,
            reserved_tokens=tokenizer.special_tokens_list(),
        )
        return cls(vocabulary, lowercase=lowercase, **special_tokens)

    def get_config(self):
        config = super().get_config()
        for key in ("oov_token", "special_tokens"):  # set from the special tokens
            config.pop(key, None)
        return config
