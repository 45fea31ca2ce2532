"""Import Hugging Face checkpoints: BERT-family encoders (BERT, MiniLM), GPT-2 and the
Llama family of causal LMs (Llama 2 and 3, Mistral, Qwen2, SmolLM).

A model directory holds config.json, model.safetensors (or the shards that
model.safetensors.index.json lists) and the tokenizer's files (vocab.txt for BERT;
vocab.json and merges.txt for GPT-2). Tensors are read one at a time with the
`safetensors` package and assigned to a tflm model of the same shapes, so an import
holds the model and one tensor, never a second copy of the whole checkpoint.

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

from tflm.layers.embedding import LLAMA3_KEYS
from tflm.models import GPT, Encoder

LLAMA_FAMILY = ("llama", "mistral", "qwen2")  # LlamaForCausalLM's layout
SUPPORTED = ("bert", "gpt2", *LLAMA_FAMILY)

# The prefix of the base model's tensors in checkpoints of its task models
# (BertForPreTraining, GPT2LMHeadModel, LlamaForCausalLM, ...); a base model's own
# checkpoint has none.
PREFIXES = {"bert": "bert.", "gpt2": "transformer.", **{kind: "model." for kind in LLAMA_FAMILY}}

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
    **{kind: (
        r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",  # RoPE's frequencies, saved by older versions
    ) for kind in LLAMA_FAMILY},
}


def from_huggingface(directory):
    """The tflm model of a Hugging Face model directory, with its tokenizer:
    an `Encoder` for BERT-family models, a `GPT` for GPT-2 and for the Llama family
    (model_type "llama", "mistral" or "qwen2": LlamaForCausalLM's layout).

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
    if "quantization_config" in config:
        raise ValueError(f"{directory} holds a quantized checkpoint "
                         f"({config['quantization_config'].get('quant_method')}); tflm imports "
                         "float weights (float32, float16 or bfloat16).")
    weights = _Weights(directory, PREFIXES[kind])
    build = {"bert": _bert, "gpt2": _gpt2}.get(kind, _llama)
    model = build(directory, config, weights)
    weights.check_all_used(IGNORED[kind])
    return model


def _need(directory, name):
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {name}.")
    return path


def _safe_open(path):
    try:
        import ml_dtypes  # noqa: F401  (numpy's bfloat16, which safetensors reads into)
        from safetensors import safe_open
    except ImportError:
        raise ImportError("Reading Hugging Face checkpoints needs safetensors: "
                          "pip install 'tflm[convert]'.") from None

    return safe_open(str(path), framework="numpy")


class _Weights:
    """The checkpoint's tensors by name (a model prefix such as "bert." stripped), read
    one at a time when asked for and assigned with checks that name the tensor; it
    records which tensors were read.

    The checkpoint is model.safetensors, or the shards of model.safetensors.index.json.
    Each read opens its file anew: safetensors maps the file into memory, and the pages
    a read touches count as the process's own until the file is closed, so one handle
    kept open for the whole import would end up holding the whole checkpoint.
    """

    def __init__(self, directory, prefix):
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            self.source = index
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            paths = [_need(directory, shard) for shard in shards]
        else:
            self.source = _need(directory, "model.safetensors")
            paths = [self.source]
        self.files, self.names = {}, {}
        for path in paths:
            with _safe_open(path) as f:
                for key in f.keys():
                    name = key[len(prefix):] if key.startswith(prefix) else key
                    self.files[name], self.names[name] = path, key
        self.used = set()

    def __contains__(self, name):
        return name in self.names

    def get(self, name):
        if name not in self.names:
            raise KeyError(f"The checkpoint has no tensor {name!r}.")
        self.used.add(name)
        with _safe_open(self.files[name]) as f:
            return f.get_tensor(self.names[name])

    def assign(self, variable, name, transpose=False, value=None):
        value = self.get(name) if value is None else value
        value = value.T if transpose else value
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Tensor {name!r} has shape {value.shape}; the model's {variable.path!r} "
                f"needs {tuple(variable.shape)}."
            )
        variable.assign(value.astype(np.float32, copy=False))  # bfloat16 and float16 widen

    def check_all_used(self, ignored):
        """Raise naming the tensors of the checkpoint that were not read and that no
        pattern of `ignored` matches: it holds more than the model it describes."""
        unused = sorted(
            self.names[name] for name in self.names
            if name not in self.used and not any(re.fullmatch(p, name) for p in ignored)
        )
        if unused:
            shown = ", ".join(repr(name) for name in unused[:10])
            more = f" and {len(unused) - 10} more" if len(unused) > 10 else ""
            raise ValueError(
                f"{self.source} holds {len(unused)} tensor(s) that the model built from its "
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
        _fused(weights, block.attention.qkv,
               [f"{prefix}.attention.self.{part}" for part in ("query", "key", "value")])
        _dense(weights, block.attention.output_projection, f"{prefix}.attention.output.dense")
        _norm(weights, block.norm_1, f"{prefix}.attention.output.LayerNorm")
        _dense(weights, block.feed_forward.up, f"{prefix}.intermediate.dense")
        _dense(weights, block.feed_forward.down, f"{prefix}.output.dense")
        _norm(weights, block.norm_2, f"{prefix}.output.LayerNorm")
    if "pooler.dense.weight" in weights:
        _dense(weights, encoder.pooler, "pooler.dense")
    return encoder


def _gpt2(directory, config, weights):
    from tflm.tokenizers import BPETokenizer

    tokenizer = _tokenizer(directory, config["vocab_size"])
    if tokenizer is None:  # GPT-2's own files
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
    if "lm_head.weight" in weights:  # GPT2LMHeadModel's head, saved by some versions
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


def _llama(directory, config, weights):
    """A `GPT` from LlamaForCausalLM's layout (Llama, Mistral, Qwen2): pre-norm blocks of
    RMSNorm, rotary grouped-query attention and a SwiGLU feed-forward."""
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Unsupported hidden_act {config['hidden_act']!r}; the Llama "
                         "family's feed-forward is SwiGLU (silu).")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    rope_max_wavelength, rope_scaling = _rope(config)
    model = GPT(
        vocab_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        hidden_dim=hidden,
        max_sequence_length=config["max_position_embeddings"],
        position="rotary",
        norm="rmsnorm",
        layer_norm_epsilon=config.get("rms_norm_eps", 1e-6),
        dropout=0.0,
        tie_embeddings=config.get("tie_word_embeddings", False),
        initializer_range=config.get("initializer_range", 0.02),
        num_heads=heads,
        intermediate_dim=config["intermediate_size"],
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=None if head_dim * heads == hidden else head_dim,
        activation="swiglu",
        norm_position="pre",
        **_llama_biases(config),
        rope_max_wavelength=rope_max_wavelength,
        rope_scaling=rope_scaling,
        sliding_window=_sliding_window(config),
        tokenizer=_tokenizer(directory, config["vocab_size"]),
    )
    model.build((None, None))
    weights.assign(model.embedding.token_embedding.embeddings, "embed_tokens.weight")
    if model.tie_embeddings:
        if "lm_head.weight" in weights and not np.array_equal(
                weights.get("lm_head.weight"), weights.get("embed_tokens.weight")):
            raise ValueError("The checkpoint's lm_head.weight differs from embed_tokens.weight, "
                             "but config.json says tie_word_embeddings.")
    else:
        weights.assign(model.embedding.token_embedding.reverse_embeddings, "lm_head.weight",
                       transpose=True)
    for i, block in enumerate(model.blocks):
        prefix = f"layers.{i}"
        weights.assign(block.norm_1.scale, f"{prefix}.input_layernorm.weight")
        _fused(weights, block.attention.qkv, [f"{prefix}.self_attn.{p}_proj" for p in "qkv"])
        _linear(weights, block.attention.output_projection, f"{prefix}.self_attn.o_proj")
        weights.assign(block.norm_2.scale, f"{prefix}.post_attention_layernorm.weight")
        # the fused up projection is [gate | up]: silu(gate) * up
        _fused(weights, block.feed_forward.up, [f"{prefix}.mlp.{p}_proj" for p in ("gate", "up")])
        _linear(weights, block.feed_forward.down, f"{prefix}.mlp.down_proj")
    weights.assign(model.final_norm.scale, "norm.weight")
    return model


def _fused(weights, dense, names):
    """Assign the PyTorch linears `names` side by side to one Keras Dense (q|k|v, gate|up)."""
    weights.assign(dense.kernel, names[0] + ".weight",
                   value=np.concatenate([weights.get(n + ".weight").T for n in names], axis=1))
    if dense.use_bias:
        weights.assign(dense.bias, names[0] + ".bias",
                       value=np.concatenate([weights.get(n + ".bias") for n in names]))


def _tokenizer(directory, vocab_size):
    """The tokenizer of tokenizer.json (byte-level BPE), with placeholder tokens for the rows a
    checkpoint pads its vocabulary with (Qwen2's embedding has 151,936 rows for 151,665
    tokens); None when the directory has no tokenizer: the model then takes token ids."""
    from tflm.tokenizers import BPETokenizer, from_tokenizer_json

    if not (directory / "tokenizer.json").is_file():
        if (directory / "tokenizer.model").is_file():
            raise ValueError(f"{directory} has a SentencePiece tokenizer.model and no tokenizer.json: "
                             "SentencePiece vocabularies are not supported yet.")
        return None
    tokenizer = from_tokenizer_json(directory)
    size = tokenizer.vocabulary_size()
    if size > vocab_size:
        raise ValueError(f"{directory / 'tokenizer.json'} has {size} tokens but config.json's "
                         f"vocab_size is {vocab_size}.")
    if size == vocab_size:
        return tokenizer
    padding = [f"<|padding_{i}|>" for i in range(size, vocab_size)]
    vocabulary = {**dict(tokenizer.vocabulary), **{t: i for i, t in enumerate(padding, size)}}
    config = {k: v for k, v in tokenizer.get_config().items()
              if k not in ("name", "trainable", "dtype", "config_file")}
    config["added_tokens"] = [*config["added_tokens"], *padding]
    return BPETokenizer(vocabulary, list(tokenizer.merges), **config)


def _linear(weights, layer, name):
    """A torch Linear (out, in) into a Keras Dense (in, out), with its bias if it has one."""
    weights.assign(layer.kernel, f"{name}.weight", transpose=True)
    if layer.use_bias:
        weights.assign(layer.bias, f"{name}.bias")


def _llama_biases(config):
    """`use_bias` and `qkv_bias` of the family: Qwen2 has biases on q, k and v only;
    Llama has them on all of attention (attention_bias) and all of the MLP (mlp_bias)."""
    if config["model_type"] == "qwen2":
        return {"use_bias": False, "qkv_bias": True}
    attention, mlp = config.get("attention_bias", False), config.get("mlp_bias", False)
    if attention != mlp:
        raise ValueError(f"attention_bias={attention} with mlp_bias={mlp} has no tflm "
                         "counterpart: a GPT has biases on all projections or none (but q/k/v).")
    return {"use_bias": attention, "qkv_bias": None}


def _rope(config):
    """`(rope_max_wavelength, rope_scaling)` from transformers 5's `rope_parameters` or the
    `rope_theta` and `rope_scaling` of older configs."""
    parameters = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = parameters.pop("rope_theta", config.get("rope_theta", 10000.0))
    kind = parameters.get("rope_type", parameters.get("type"))
    if parameters.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor has no tflm counterpart: RoPE turns whole heads.")
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"RoPE scaling {kind!r} is not supported; tflm implements 'llama3' "
                         "(Llama 3.1 and 3.2) and none ('default').")
    return float(theta), {"rope_type": "llama3",
                          **{key: parameters[key] for key in LLAMA3_KEYS if key in parameters}}


def _sliding_window(config):
    """Mistral's window, or Qwen2's when every layer has one; None when the window covers
    the whole context. Qwen2's mix of windowed and full layers is refused."""
    window = config.get("sliding_window")
    if config["model_type"] == "qwen2" and window is not None:
        window = window if config.get("use_sliding_window") else None
        first_windowed = config.get("max_window_layers", 28)  # Qwen2's windowed layers come last
        types = config.get("layer_types") or [
            "sliding_attention" if i >= first_windowed else "full_attention"
            for i in range(config["num_hidden_layers"])
        ]
        if window is not None and len(set(types)) > 1:
            raise ValueError(f"layer_types {types} mixes sliding-window and full attention; a "
                             "tflm GPT has the same attention in every block.")
        window = window if types[0] == "sliding_attention" else None
    if window is None or window >= config["max_position_embeddings"]:
        return None
    return window
