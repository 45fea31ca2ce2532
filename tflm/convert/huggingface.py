"""Import Hugging Face checkpoints: BERT-family encoders (BERT, MiniLM) and GPT-2.

A model directory holds config.json, model.safetensors and the tokenizer's files
(vocab.txt for BERT; vocab.json and merges.txt for GPT-2). Weights are read with the
`safetensors` package and assigned to a tflm model of the same shapes.

Every tensor of the checkpoint must find its place in the model: a tensor left over (an
extra layer, a task head, a misnamed weight) is an error that names it, so a checkpoint
that does not match its config.json never imports half-way. The only tensors skipped are
those in `IGNORED`: buffers that PyTorch saves beside the weights and pre-training heads
that the imported base model has no place for.
"""

import json
import re
from pathlib import Path

import numpy as np

from tflm.models import GPT, Encoder

SUPPORTED = ("bert", "gpt2")

# The prefix of the base model's tensors in checkpoints of its task models
# (BertForPreTraining, GPT2LMHeadModel, ...); a base model's own checkpoint has none.
PREFIXES = {"bert": "bert.", "gpt2": "transformer."}

# Tensors a checkpoint may hold that the imported model does not use (full-name regular
# expressions, matched after the prefix above is removed).
IGNORED = {
    "bert": (
        r"embeddings\.position_ids",  # the buffer 0, 1, ..., max_position_embeddings - 1
        r"cls\.(predictions|seq_relationship)\..+",  # BertForPreTraining's masked-LM and next-sentence heads
    ),
    "gpt2": (
        r"h\.\d+\.attn\.(bias|masked_bias)",  # the causal-mask buffers older transformers saved
    ),
}


def from_huggingface(directory):
    """The tflm model of a Hugging Face model directory, with its tokenizer:
    an `Encoder` for BERT-family models, a `GPT` for GPT-2.

    A tensor that the model does not use, other than those `IGNORED` lists, is a
    `ValueError` naming it; a tensor the model needs and the checkpoint lacks is a
    `KeyError`; a tensor of the wrong shape is a `ValueError`.
    """
    directory = Path(directory)
    config = json.loads(_need(directory, "config.json").read_text())
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(
            f"{directory} holds a {kind!r} model; tflm imports {', '.join(SUPPORTED)}."
        )
    path = _need(directory, "model.safetensors")
    weights = _Weights(_read_safetensors(path), PREFIXES[kind])
    model = (_bert if kind == "bert" else _gpt2)(directory, config, weights)
    weights.check_all_used(path, IGNORED[kind])
    return model


def _need(directory, name):
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {name}.")
    return path


def _read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError("Reading Hugging Face checkpoints needs safetensors: "
                          "pip install 'tflm[convert]'.") from None

    return load_file(str(path))


class _Weights:
    """The checkpoint's tensors by name (a model prefix such as "bert." stripped),
    assigned with checks that name the tensor; it records which tensors were read."""

    def __init__(self, tensors, prefix):
        self.names = {k[len(prefix):] if k.startswith(prefix) else k: k for k in tensors}
        self.tensors = {name: tensors[k] for name, k in self.names.items()}
        self.used = set()

    def get(self, name):
        if name not in self.tensors:
            raise KeyError(f"The checkpoint has no tensor {name!r}.")
        self.used.add(name)
        return self.tensors[name]

    def assign(self, variable, name, transpose=False, value=None):
        value = self.get(name) if value is None else value
        value = value.T if transpose else value
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Tensor {name!r} has shape {value.shape}; the model's {variable.path!r} "
                f"needs {tuple(variable.shape)}."
            )
        variable.assign(value.astype(np.float32))

    def check_all_used(self, path, ignored):
        """Raise naming the tensors of `path` that were not read and that no pattern of
        `ignored` matches: the checkpoint holds more than the model it describes."""
        unused = sorted(
            self.names[name] for name in self.tensors
            if name not in self.used and not any(re.fullmatch(p, name) for p in ignored)
        )
        if unused:
            shown = ", ".join(repr(name) for name in unused[:10])
            more = f" and {len(unused) - 10} more" if len(unused) > 10 else ""
            raise ValueError(
                f"{path} holds {len(unused)} tensor(s) that the model built from its "
                f"config.json does not use: {shown}{more}. Is a tensor misnamed, or does "
                "config.json describe fewer layers than the checkpoint holds?"
            )


def _norm(weights, layer, name):
    weights.assign(layer.gamma, f"{name}.weight")
    weights.assign(layer.beta, f"{name}.bias")


def _dense(weights, layer, name, transpose=True):
    weights.assign(layer.kernel, f"{name}.weight", transpose=transpose)
    weights.assign(layer.bias, f"{name}.bias")


def _bert(directory, config, weights):
    from tflm.tokenizers import WordPieceTokenizer

    settings = {}
    if (directory / "tokenizer_config.json").is_file():
        settings = json.loads((directory / "tokenizer_config.json").read_text())
    lowercase = settings.get("do_lower_case", True)
    strip_accents = settings.get("strip_accents")  # None: as lowercase, BERT's rule
    tokenizer = WordPieceTokenizer(
        str(_need(directory, "vocab.txt")), lowercase=lowercase,
        strip_accents=lowercase if strip_accents is None else strip_accents,
    )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"Unsupported hidden_act {config['hidden_act']!r}; tflm's BERT uses gelu.")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("Only absolute position embeddings are supported.")
    encoder = Encoder(
        vocab_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        hidden_dim=config["hidden_size"],
        intermediate_dim=config["intermediate_size"],
        max_sequence_length=config["max_position_embeddings"],
        num_segments=config.get("type_vocab_size", 2),
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
        dropout=config.get("hidden_dropout_prob", 0.1),
        tokenizer=tokenizer,
    )
    encoder.build({"token_ids": (None, None), "padding_mask": (None, None)})
    weights.assign(encoder.embedding.token_embedding.embeddings, "embeddings.word_embeddings.weight")
    weights.assign(encoder.embedding.position_encoding.position_embeddings,
                   "embeddings.position_embeddings.weight")
    weights.assign(encoder.segment_embedding.embeddings, "embeddings.token_type_embeddings.weight")
    _norm(weights, encoder.embedding_norm, "embeddings.LayerNorm")
    for i, block in enumerate(encoder.blocks):
        prefix = f"encoder.layer.{i}"
        qkv = [f"{prefix}.attention.self.{part}" for part in ("query", "key", "value")]
        weights.assign(block.attention.qkv.kernel, qkv[0] + ".weight",
                       value=np.concatenate([weights.get(p + ".weight").T for p in qkv], axis=1))
        weights.assign(block.attention.qkv.bias, qkv[0] + ".bias",
                       value=np.concatenate([weights.get(p + ".bias") for p in qkv]))
        _dense(weights, block.attention.output_projection, f"{prefix}.attention.output.dense")
        _norm(weights, block.norm_1, f"{prefix}.attention.output.LayerNorm")
        _dense(weights, block.feed_forward.up, f"{prefix}.intermediate.dense")
        _dense(weights, block.feed_forward.down, f"{prefix}.output.dense")
        _norm(weights, block.norm_2, f"{prefix}.output.LayerNorm")
    if "pooler.dense.weight" in weights.tensors:
        _dense(weights, encoder.pooler, "pooler.dense")
    return encoder


def _gpt2(directory, config, weights):
    from tflm.tokenizers import BPETokenizer

    tokenizer = BPETokenizer(str(_need(directory, "vocab.json")), str(_need(directory, "merges.txt")))
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"Unsupported activation_function {config['activation_function']!r}.")
    hidden = config["n_embd"]
    model = GPT(
        vocab_size=config["vocab_size"],
        num_layers=config["n_layer"],
        num_heads=config["n_head"],
        hidden_dim=hidden,
        intermediate_dim=config.get("n_inner") or 4 * hidden,
        max_sequence_length=config["n_positions"],
        position="learned",
        activation="gelu_tanh",
        norm="layernorm",
        norm_position="pre",
        layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        dropout=config.get("resid_pdrop", 0.1),
        tie_embeddings=True,
        use_bias=True,
        tokenizer=tokenizer,
    )
    model.build((None, None))
    weights.assign(model.embedding.token_embedding.embeddings, "wte.weight")
    if "lm_head.weight" in weights.tensors:  # GPT2LMHeadModel's head, saved by some versions
        if not np.array_equal(weights.get("lm_head.weight"), weights.get("wte.weight")):
            raise ValueError("The checkpoint's lm_head.weight differs from wte.weight; tflm's "
                             "GPT-2 ties its output layer to the token embedding.")
    weights.assign(model.embedding.position_encoding.position_embeddings, "wpe.weight")
    for i, block in enumerate(model.blocks):
        # GPT-2's Conv1D stores (in, out), the layout of a Keras kernel: no transpose
        _norm(weights, block.norm_1, f"h.{i}.ln_1")
        _dense(weights, block.attention.qkv, f"h.{i}.attn.c_attn", transpose=False)
        _dense(weights, block.attention.output_projection, f"h.{i}.attn.c_proj", transpose=False)
        _norm(weights, block.norm_2, f"h.{i}.ln_2")
        _dense(weights, block.feed_forward.up, f"h.{i}.mlp.c_fc", transpose=False)
        _dense(weights, block.feed_forward.down, f"h.{i}.mlp.c_proj", transpose=False)
    _norm(weights, model.final_norm, "ln_f")
    return model
