"""Model presets: complete configurations, as data. Every value a model depends on is here.

A preset is a configuration, not trained weights: `GPT.from_preset(name)` builds the
architecture with fresh weights. Pretrained weights come from the other handles that
`from_preset` and `load` take (`tflm.hub`): `hf://owner/name`, a Hugging Face model
directory, a directory written by `save_to_preset`, a `.keras` file.
"""

# Tokenizers are given as Keras serialization configs (data); they are built when a
# preset is used, which imports TensorFlow (pass tokenizer=None to avoid it).
SHAKESPEARE_CHAR_TOKENIZER = {
    "module": "tflm.tokenizers.table",
    "class_name": "CharTokenizer",
    "registered_name": "tflm>CharTokenizer",
    "config": {
        # the 65 characters of tiny Shakespeare, sorted, as nanoGPT's shakespeare_char
        "vocabulary": "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "bos_token": None,
        "eos_token": None,
        "pad_token": None,
        "mask_token": None,
        "unk_token": None,
    },
}

GPT_PRESETS = {
    # Character-level Shakespeare, sized to train on 2 CPU cores in minutes: trained by
    # `tflm train` (configs/shakespeare-char.yaml: 128-character blocks, batch 32, AdamW
    # 3e-3 -> 3e-4 fitted to the time budget), it reaches a validation loss of about
    # 1.50-1.52 nats/char within 10 minutes of the command's start, as the README says
    # (each run's figure: benchmarks/RESULTS.md, "The 10-minute race").
    # Rotary positions carry no weights, so the context (256) may exceed the training blocks.
    "shakespeare-char": dict(
        vocab_size=65,
        num_layers=4,
        num_heads=4,
        hidden_dim=192,
        intermediate_dim=512,
        max_sequence_length=256,
        block="transformer",
        position="rotary",
        num_kv_heads=None,
        activation="swiglu",
        norm="rmsnorm",
        norm_position="pre",
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        tie_embeddings=True,
        use_bias=False,
        rope_max_wavelength=10000.0,
        initializer_range=0.02,
        scaled_residual_init=True,
        remat=False,
        tokenizer=SHAKESPEARE_CHAR_TOKENIZER,
    ),
    # The design of the original char-level models: embedding + sinusoidal positions +
    # stacked LSTMs + an output head of its own.
    "shakespeare-char-lstm": dict(
        vocab_size=65,
        num_layers=2,
        hidden_dim=256,
        max_sequence_length=256,
        block="lstm",
        position="sinusoidal",
        norm="layernorm",
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        tie_embeddings=False,
        initializer_range=0.02,
        remat=False,
        tokenizer=SHAKESPEARE_CHAR_TOKENIZER,
    ),
    # GPT-2 small (124M parameters), the shapes of OpenAI's release.
    "gpt2-124m": dict(
        vocab_size=50257,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        max_sequence_length=1024,
        block="transformer",
        position="learned",
        num_kv_heads=None,
        activation="gelu_tanh",
        norm="layernorm",
        norm_position="pre",
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        tie_embeddings=True,
        use_bias=True,
        rope_max_wavelength=10000.0,
        initializer_range=0.02,
        scaled_residual_init=True,
        remat=False,
        # GPT-2's BPE files are not shipped: load them with
        # tflm.tokenizers.BPETokenizer("vocab.json", "merges.txt") or tflm.convert.
        tokenizer=None,
    ),
}

ENCODER_PRESETS = {
    # A BERT-shaped encoder small enough to train from scratch on a CPU.
    "bert-tiny": dict(
        vocab_size=30522,
        num_layers=2,
        num_heads=2,
        hidden_dim=128,
        intermediate_dim=512,
        max_sequence_length=512,
        num_segments=2,
        position="learned",
        activation="gelu",
        norm="layernorm",
        norm_position="post",
        layer_norm_epsilon=1e-12,
        dropout=0.1,
        use_bias=True,
        tokenizer=None,  # a WordPiece vocabulary comes with pretrained weights (tflm.convert)
    ),
    # BERT base (110M parameters).
    "bert-base": dict(
        vocab_size=30522,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        max_sequence_length=512,
        num_segments=2,
        position="learned",
        activation="gelu",
        norm="layernorm",
        norm_position="post",
        layer_norm_epsilon=1e-12,
        dropout=0.1,
        use_bias=True,
        tokenizer=None,  # a WordPiece vocabulary comes with pretrained weights (tflm.convert)
    ),
}


# Where the weights of names a user may try for a pretrained model live on the Hugging Face
# Hub (safetensors on the main branch): errors and docs point there, since a preset of the
# same shape (gpt2-124m, bert-base) has fresh weights.
HUB_CHECKPOINTS = {
    "gpt2": "hf://openai-community/gpt2",
    "gpt2-124m": "hf://openai-community/gpt2",
    "gpt2-medium": "hf://openai-community/gpt2-medium",
    "gpt2-large": "hf://openai-community/gpt2-large",
    "gpt2-xl": "hf://openai-community/gpt2-xl",
    "distilgpt2": "hf://distilbert/distilgpt2",
    "bert-base": "hf://google-bert/bert-base-uncased",
    "bert-base-uncased": "hf://google-bert/bert-base-uncased",
    "bert-base-cased": "hf://google-bert/bert-base-cased",
    "all-MiniLM-L6-v2": "hf://sentence-transformers/all-MiniLM-L6-v2",
}

# Keras layer arguments that a preset leaves to the caller.
LAYER_ARGUMENTS = {"dtype", "name", "trainable"}


def resolve_preset(presets, name, overrides):
    """The preset's configuration with `overrides` applied; unknown names are errors."""
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(presets)}.")
    unknown = set(overrides) - set(presets[name]) - LAYER_ARGUMENTS
    if unknown:
        raise ValueError(
            f"Unknown override(s) {sorted(unknown)} for preset {name!r}; "
            f"its keys are {sorted(presets[name])}."
        )
    return {**presets[name], **overrides}


def load(handle, **overrides):
    """The model a handle names, of whichever class it holds (see `tflm.hub`): a preset
    name (fresh weights), `hf://owner/name[@revision]`, a Hugging Face model directory, a
    tflm preset directory (`save_to_preset`) or a `.keras` file.

    Example:
    >>> model = tflm.models.load("hf://openai-community/gpt2")      # a GPT, GPT-2's weights
    >>> classifier = tflm.models.load("runs/sst2/classifier.keras")  # a Classifier
    """
    from tflm import hub  # hub imports the model classes: imported on use

    return hub.load(handle, **overrides)
