"""A model's optional tokenizer: serialized in its config, checked against its vocabulary.

Tokenizers run on TensorFlow, so their module is imported only when a model actually has
one: the model code itself stays backend-neutral.
"""

import importlib

import keras


def deserialize_tokenizer(tokenizer):
    """A tokenizer layer from its serialized config (or the layer itself, or None)."""
    if not isinstance(tokenizer, dict):
        return tokenizer
    importlib.import_module("tflm.tokenizers")  # registers the tokenizer classes
    return keras.saving.deserialize_keras_object(tokenizer)


def serialize_tokenizer(tokenizer):
    return None if tokenizer is None else keras.saving.serialize_keras_object(tokenizer)


def check_tokenizer(tokenizer, vocab_size):
    """Fail fast when the tokenizer's ids do not fit the model's vocabulary.

    The one vocabulary check of tflm: models run it on the tokenizer they are given, and
    the data pipelines on a tokenizer and the model it feeds.
    """
    if tokenizer is None or getattr(tokenizer, "vocabulary", True) is None:
        return  # none, or its vocabulary is still to be loaded from the saved assets
    size = tokenizer.vocabulary_size()
    if size != vocab_size:
        raise ValueError(
            f"The tokenizer ({type(tokenizer).__name__}) has {size} tokens but the model's "
            f"vocabulary has {vocab_size}: they were not made for each other."
        )
