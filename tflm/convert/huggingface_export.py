"""Export to Hugging Face: a tflm model as a transformers model directory.

    to_huggingface(gpt, "out/")      # config.json, model.safetensors, tokenizer files
    transformers.AutoModelForCausalLM.from_pretrained("out/")

A GPT goes out in GPT-2's layout (learned positions, LayerNorm, GELU with biases, tied
embeddings) or in Llama's (rotary positions, RMSNorm, SwiGLU, no biases; Qwen2's when
only q/k/v have biases), whichever its options match; an Encoder in BERT's. An option
that neither layout has is an error that names it, so an export never computes something
else than the model. The weights are those of the tflm model in float32; the tokenizer
goes with them in the files transformers' tokenizers read: tokenizer.json (a BPETokenizer
with its pre-tokenizer and added tokens; a ByteTokenizer, or a CharTokenizer of single-byte
characters, as byte-level BPE without merges) or vocab.txt (WordPiece).
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
from keras import ops

from tflm.models import GPT, Encoder
from tflm.tokenizers import (BPETokenizer, ByteTokenizer, CharTokenizer, WordPieceTokenizer,
                             to_tokenizer_json)


def to_huggingface(model, directory):
    """Write `model` (a GPT or an Encoder, with its tokenizer if it has one) into
    `directory` as a Hugging Face model; returns the directory. An existing non-empty
    directory is refused; the files are written into a temporary folder first, so a
    failed export leaves nothing half-written."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty: choose a new directory.")
    if isinstance(model, GPT):
        config, tensors = _llama(model) if model.position == "rotary" else _gpt2(model)
    elif isinstance(model, Encoder):
        config, tensors = _bert(model)
    else:
        raise TypeError(f"Cannot export a {type(model).__name__}; expected a GPT or an Encoder.")
    from safetensors.numpy import save_file

    temporary = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        if model.tokenizer is not None:
            config.update(_write_tokenizer(model.tokenizer, temporary))
        (temporary / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                  str(temporary / "model.safetensors"), metadata={"format": "pt"})
        if directory.exists():
            directory.rmdir()  # empty, checked above
        temporary.rename(directory)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return directory


def _value(variable):
    return np.asarray(ops.convert_to_numpy(variable), np.float32)


def _require(model, layout, **expected):
    """Refuse an option of `model` that `layout` has no counterpart for, naming it."""
    for name, allowed in expected.items():
        value = getattr(model, name, None)
        if value not in (allowed if isinstance(allowed, tuple) else (allowed,)):
            raise ValueError(f"{type(model).__name__} option {name}={value!r} has no counterpart in "
                             f"the {layout} layout (it needs {name}={allowed!r}).")


def _qkv(attention):
    """The fused (hidden, q + k + v) kernel and bias split into q, k, v."""
    q = attention.num_heads * attention.head_dim
    kv = (attention.num_kv_heads or attention.num_heads) * attention.head_dim
    kernel = _value(attention.qkv.kernel)
    kernels = np.split(kernel, [q, q + kv], axis=1)
    biases = np.split(_value(attention.qkv.bias), [q, q + kv]) if attention.qkv.use_bias else None
    return kernels, biases


def _gpt2(model):
    layout = "GPT-2"
    _require(model, layout, block="transformer", position="learned", norm="layernorm",
             norm_position="pre", activation="gelu_tanh", use_bias=True, qkv_bias=(None, True),
             tie_embeddings=True, sliding_window=None)
    if model.num_kv_heads not in (None, model.num_heads):
        raise ValueError(f"GPT option num_kv_heads={model.num_kv_heads!r} has no counterpart in the "
                         f"GPT-2 layout (it needs as many key/value heads as heads).")
    if model.head_dim not in (None, model.hidden_dim // model.num_heads):
        raise ValueError(f"GPT option head_dim={model.head_dim!r} has no counterpart in the GPT-2 "
                         "layout (it needs hidden_dim / num_heads).")
    tensors = {"transformer.wte.weight": _value(model.embedding.token_embedding.embeddings),
               "transformer.wpe.weight": _value(model.embedding.position_encoding.position_embeddings)}
    for i, block in enumerate(model.blocks):
        prefix = f"transformer.h.{i}"
        # GPT-2's Conv1D keeps (in, out), a Keras kernel's layout
        for name, layer in [("attn.c_attn", block.attention.qkv),
                            ("attn.c_proj", block.attention.output_projection),
                            ("mlp.c_fc", block.feed_forward.up), ("mlp.c_proj", block.feed_forward.down)]:
            tensors[f"{prefix}.{name}.weight"] = _value(layer.kernel)
            tensors[f"{prefix}.{name}.bias"] = _value(layer.bias)
        for name, norm in [("ln_1", block.norm_1), ("ln_2", block.norm_2)]:
            tensors[f"{prefix}.{name}.weight"] = _value(norm.gamma)
            tensors[f"{prefix}.{name}.bias"] = _value(norm.beta)
    tensors["transformer.ln_f.weight"] = _value(model.final_norm.gamma)
    tensors["transformer.ln_f.bias"] = _value(model.final_norm.beta)
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": model.vocab_size, "n_positions": model.max_sequence_length,
        "n_embd": model.hidden_dim, "n_layer": model.num_layers, "n_head": model.num_heads,
        "n_inner": model.intermediate_dim, "activation_function": "gelu_new",
        "layer_norm_epsilon": model.layer_norm_epsilon, "resid_pdrop": model.dropout,
        "embd_pdrop": model.dropout, "attn_pdrop": model.dropout, "tie_word_embeddings": True,
    }
    return config, tensors


def _llama(model):
    layout = "Llama"
    _require(model, layout, block="transformer", norm="rmsnorm", norm_position="pre",
             activation="swiglu", use_bias=False)
    qkv_bias = bool(model.qkv_bias)
    first = model.blocks[0].attention
    tensors = {"model.embed_tokens.weight": _value(model.embedding.token_embedding.embeddings)}
    for i, block in enumerate(model.blocks):
        prefix = f"model.layers.{i}"
        (q, k, v), biases = _qkv(block.attention)
        for name, kernel in zip("qkv", (q, k, v)):
            tensors[f"{prefix}.self_attn.{name}_proj.weight"] = kernel.T
        for name, bias in zip("qkv", biases or ()):
            tensors[f"{prefix}.self_attn.{name}_proj.bias"] = bias
        tensors[f"{prefix}.self_attn.o_proj.weight"] = _value(block.attention.output_projection.kernel).T
        gate, up = np.split(_value(block.feed_forward.up.kernel), 2, axis=1)  # the order `call` splits
        tensors[f"{prefix}.mlp.gate_proj.weight"] = gate.T
        tensors[f"{prefix}.mlp.up_proj.weight"] = up.T
        tensors[f"{prefix}.mlp.down_proj.weight"] = _value(block.feed_forward.down.kernel).T
        tensors[f"{prefix}.input_layernorm.weight"] = _value(block.norm_1.scale)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = _value(block.norm_2.scale)
    tensors["model.norm.weight"] = _value(model.final_norm.scale)
    if not model.tie_embeddings:
        tensors["lm_head.weight"] = _value(model.embedding.token_embedding.reverse_embeddings).T
    kind, architecture = ("qwen2", "Qwen2ForCausalLM") if qkv_bias else ("llama", "LlamaForCausalLM")
    if model.sliding_window is not None:
        kind, architecture = ("qwen2", "Qwen2ForCausalLM") if qkv_bias else ("mistral", "MistralForCausalLM")
    config = {
        "architectures": [architecture], "model_type": kind,
        "vocab_size": model.vocab_size, "hidden_size": model.hidden_dim,
        "intermediate_size": model.intermediate_dim, "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads or model.num_heads,
        "head_dim": first.head_dim, "max_position_embeddings": model.max_sequence_length,
        "rms_norm_eps": model.layer_norm_epsilon, "rope_theta": model.rope_max_wavelength,
        "rope_scaling": model.rope_scaling, "tie_word_embeddings": model.tie_embeddings,
        "hidden_act": "silu", "attention_dropout": model.dropout,
    }
    if kind == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    if model.sliding_window is not None:
        config.update(sliding_window=model.sliding_window, use_sliding_window=True,
                      max_window_layers=model.num_layers)
    elif kind == "qwen2":
        config.update(use_sliding_window=False)
    return config, tensors


def _bert(model):
    layout = "BERT"
    _require(model, layout, position="learned", norm="layernorm", norm_position="post",
             activation="gelu", use_bias=True)
    if model.num_segments is None or model.embedding_norm is None:
        raise ValueError("An Encoder without segment embeddings has no counterpart in the BERT layout.")
    tensors = {
        "embeddings.word_embeddings.weight": _value(model.embedding.token_embedding.embeddings),
        "embeddings.position_embeddings.weight": _value(model.embedding.position_encoding.position_embeddings),
        "embeddings.token_type_embeddings.weight": _value(model.segment_embedding.embeddings),
        "embeddings.LayerNorm.weight": _value(model.embedding_norm.gamma),
        "embeddings.LayerNorm.bias": _value(model.embedding_norm.beta),
        "pooler.dense.weight": _value(model.pooler.kernel).T,
        "pooler.dense.bias": _value(model.pooler.bias),
    }
    for i, block in enumerate(model.blocks):
        prefix = f"encoder.layer.{i}"
        (q, k, v), (qb, kb, vb) = _qkv(block.attention)
        for name, kernel, bias in [("query", q, qb), ("key", k, kb), ("value", v, vb)]:
            tensors[f"{prefix}.attention.self.{name}.weight"] = kernel.T
            tensors[f"{prefix}.attention.self.{name}.bias"] = bias
        for name, layer in [("attention.output.dense", block.attention.output_projection),
                            ("intermediate.dense", block.feed_forward.up),
                            ("output.dense", block.feed_forward.down)]:
            tensors[f"{prefix}.{name}.weight"] = _value(layer.kernel).T
            tensors[f"{prefix}.{name}.bias"] = _value(layer.bias)
        for name, norm in [("attention.output.LayerNorm", block.norm_1), ("output.LayerNorm", block.norm_2)]:
            tensors[f"{prefix}.{name}.weight"] = _value(norm.gamma)
            tensors[f"{prefix}.{name}.bias"] = _value(norm.beta)
    config = {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": model.vocab_size, "hidden_size": model.hidden_dim,
        "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
        "intermediate_size": model.intermediate_dim, "hidden_act": "gelu",
        "max_position_embeddings": model.max_sequence_length, "type_vocab_size": model.num_segments,
        "layer_norm_eps": model.layer_norm_epsilon, "hidden_dropout_prob": model.dropout,
        "attention_probs_dropout_prob": model.dropout,
    }
    return config, tensors


# -- tokenizers ------------------------------------------------------------------------------

def _byte_to_unicode():
    """GPT-2's printable stand-in for each byte, as its vocab.json spells tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


def _write_tokenizer(tokenizer, directory):
    """Write the tokenizer's files; returns the config.json entries it implies (token ids)."""
    specials = {name: getattr(tokenizer, name, None)
                for name in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")}
    specials = {name: token for name, token in specials.items() if token is not None}
    if isinstance(tokenizer, WordPieceTokenizer):
        (directory / "vocab.txt").write_text("".join(f"{t}\n" for t in tokenizer.get_vocabulary()),
                                             encoding="utf-8")
        settings = {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase,
                    "strip_accents": tokenizer.strip_accents}
    elif isinstance(tokenizer, BPETokenizer):
        to_tokenizer_json(tokenizer, directory)  # its pre-tokenizer, added tokens, ... as well
        settings = json.loads((directory / "tokenizer_config.json").read_text())
    elif isinstance(tokenizer, (ByteTokenizer, CharTokenizer)):
        _write_byte_level(tokenizer, directory)
        settings = {"tokenizer_class": "PreTrainedTokenizerFast"}
    else:
        raise TypeError(f"A {type(tokenizer).__name__} has no Hugging Face counterpart.")
    settings.update(specials)
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return {f"{name[:-6]}_token_id": tokenizer.token_to_id(token) for name, token in specials.items()
            if name in ("bos_token", "eos_token", "pad_token")}


def _write_byte_level(tokenizer, directory):
    """A byte or character vocabulary as a tokenizer.json of byte-level BPE with no merges:
    each id is one byte, so a text splits into the same ids. (A BPETokenizer needs all 256
    bytes, which a character vocabulary lacks.)"""
    unicode_of = _byte_to_unicode()
    specials = tokenizer.special_tokens_list()
    vocabulary, added = {}, []
    for token_id, token in enumerate(tokenizer.get_vocabulary()):
        if token in specials:
            added.append({"id": token_id, "content": token, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True})
            vocabulary[token] = token_id
            continue
        data = token if isinstance(token, bytes) else token.encode("utf-8")
        if len(data) != 1:
            raise ValueError(f"The character {token!r} is {len(data)} bytes in UTF-8: only a "
                             "vocabulary of single-byte characters has a byte-level counterpart.")
        vocabulary[unicode_of[data[0]]] = token_id
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    document = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocabulary, "merges": []},
    }
    (directory / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
