"""Hugging Face `tokenizer.json` files of byte-level BPE models, in and out.

`from_tokenizer_json` reads the file that the `tokenizers` library writes for GPT-2,
Llama 3, Qwen2, SmolLM and their kin into a `BPETokenizer`, which gives the same ids in
core TensorFlow ops; `to_tokenizer_json` writes a `BPETokenizer` back as tokenizer.json
and tokenizer_config.json, which transformers' `PreTrainedTokenizerFast` (and
`AutoTokenizer`) load. Anything in a file that `BPETokenizer` cannot reproduce exactly
(another pre-tokenizer or regex, a normalizer other than NFC, a SentencePiece model, an
added token that strips white space) is a `ValueError` that names it: never ids that
silently differ.
"""

import json
from pathlib import Path

from tflm.tokenizers.bpe import PATTERNS, BPETokenizer

SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "mask_token", "unk_token")
SENTENCEPIECE = (
    "SentencePiece vocabularies (Llama 2, Mistral, Gemma, T5: a Unigram model, or BPE "
    "over '▁'-joined text with a Metaspace pre-tokenizer and byte fallback) are not "
    "supported: tflm reads byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM)."
)


def from_tokenizer_json(path):
    """The `BPETokenizer` of a Hugging Face tokenizer.json (`path`: the file, or a model
    directory that holds it), with the same ids as `tokenizers` gives (without the
    special tokens its post-processor adds: `add_special_tokens=False`).

    Supported: a BPE model on GPT-2's byte symbols (`ignore_merges` too), pre-tokenized
    by `ByteLevel` with its regex (GPT-2) or by `Split` with the regex of Llama 3 or Qwen2
    (`PATTERNS`) then `ByteLevel` without one, optionally after `Digits` with
    `individual_digits`; no normalizer, or NFC (Qwen2's); the `ByteLevel` decoder; added
    tokens (special or not) without lstrip, rstrip or single_word (and, with NFC, matched
    in the text as it is: normalized false). The bos, eos, pad, unk and mask
    tokens come from tokenizer_config.json beside the file when there is one; otherwise
    bos is the token the post-processor puts first (Llama 3's <|begin_of_text|>) and eos
    is "<|endoftext|>" if it is an added token.

    Example:
    >>> tokenizer = from_tokenizer_json("Llama-3.2-1B/")   # or "Llama-3.2-1B/tokenizer.json"
    >>> tokenizer.tokenize("Hello world")                  # (T,) int32
    """
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist.")
    spec = json.loads(file.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    _check_model(model, spec, file)
    normalizer = _normalizer(spec.get("normalizer"), file)
    pre_tokenizer, individual_digits = _pre_tokenizer(spec.get("pre_tokenizer"), file)
    decoder = spec.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise ValueError(f"{file}: the decoder {_short(decoder)} is not ByteLevel.")

    vocabulary = dict(model["vocab"])
    merges = []
    for merge in model["merges"]:
        parts = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(parts) != 2:
            raise ValueError(f"{file}: the merge {merge!r} is not a pair of tokens.")
        merges.append(" ".join(parts))
    added = sorted(spec.get("added_tokens") or [], key=lambda t: t["id"])
    _check_added_tokens(added, normalizer, file)
    owner = {i: t for t, i in vocabulary.items()}
    for token in added:
        content, id = token["content"], token["id"]
        if owner.get(id, content) != content or vocabulary.get(content, id) != id:
            raise ValueError(f"{file}: the added token {content!r} (id {id}) clashes with the "
                             "model's vocabulary.")
        vocabulary[content], owner[id] = id, content
    contents = [t["content"] for t in added]
    specials = _special_tokens(file, spec, contents)
    return BPETokenizer(
        vocabulary,
        merges,
        **specials,
        pre_tokenizer=pre_tokenizer,
        individual_digits=individual_digits,
        added_tokens=contents,
        ignore_merges=bool(model.get("ignore_merges", False)),
        normalizer=normalizer,
    )


def to_tokenizer_json(tokenizer, directory):
    """Write `tokenizer` (a `BPETokenizer`) into `directory` as Hugging Face's
    tokenizer.json and tokenizer_config.json; transformers' `AutoTokenizer` loads them
    and encodes text to the same ids. Its special and added tokens are written as
    special added tokens; a bos token is put before each text by the post-processor,
    as Llama 3's files do. Returns the path of tokenizer.json.

    Example:
    >>> to_tokenizer_json(model.tokenizer, "exported/")
    >>> # transformers.AutoTokenizer.from_pretrained("exported/")
    """
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"to_tokenizer_json writes a BPETokenizer, not {type(tokenizer).__name__}.")
    tokenizer._check_vocabulary()
    vocabulary = tokenizer.vocabulary
    whole = set(tokenizer.special_tokens_list() + tokenizer.added_tokens)
    whole = sorted(whole, key=vocabulary.get)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    if tokenizer.pre_tokenizer == "gpt2":
        pre_tokenizers = [{**byte_level, "use_regex": True}]
    else:
        split = {"type": "Split", "pattern": {"Regex": PATTERNS[tokenizer.pre_tokenizer]},
                 "behavior": "Isolated", "invert": False}
        pre_tokenizers = [split, {**byte_level, "use_regex": False}]
    if tokenizer.individual_digits:
        pre_tokenizers.insert(0, {"type": "Digits", "individual_digits": True})
    pre_tokenizer = pre_tokenizers[0] if len(pre_tokenizers) == 1 else {
        "type": "Sequence", "pretokenizers": pre_tokenizers}
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocabulary[t], "content": t, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for t in whole
        ],
        "normalizer": {"type": "NFC"} if tokenizer.normalizer == "NFC" else None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": _post_processor(tokenizer),
        "decoder": {**byte_level, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tokenizer.ignore_merges,
            "vocab": dict(sorted(vocabulary.items(), key=lambda item: item[1])),
            "merges": list(tokenizer.merges),
        },
    }
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    settings.update(tokenizer.special_tokens_config())
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {k: v for k, v in settings.items() if v is not None}, ensure_ascii=False, indent=2),
        encoding="utf-8")
    return path


def _check_model(model, spec, file):
    kind = model.get("type")
    if kind == "Unigram":
        raise ValueError(f"{file} holds a Unigram model. {SENTENCEPIECE}")
    if kind != "BPE":
        hint = " (BERT's: use WordPieceTokenizer with vocab.txt)" if kind == "WordPiece" else ""
        raise ValueError(f"{file} holds a {kind!r} model, not byte-level BPE{hint}.")
    parts = [spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("decoder")]
    text = json.dumps(parts, ensure_ascii=False)
    if "Metaspace" in text or "\u2581" in text or model.get("byte_fallback"):
        raise ValueError(f"{file} holds a BPE model with a Metaspace pre-tokenizer or byte "
                         f"fallback. {SENTENCEPIECE}")
    unsupported = ("dropout", "continuing_subword_prefix", "end_of_word_suffix")
    if any(model.get(name) for name in unsupported):
        raise ValueError(f"{file}: BPE dropout, continuing_subword_prefix and "
                         "end_of_word_suffix are not supported.")


def _pre_tokenizer(spec, file):
    """The tokenizer.json pre-tokenizer -> (BPETokenizer's pre_tokenizer, individual_digits)."""
    spec = spec or {}
    steps = list(spec.get("pretokenizers", [])) if spec.get("type") == "Sequence" else [spec]
    digits = bool(steps) and (steps[0] or {}).get("type") == "Digits"
    if digits:
        if not steps[0].get("individual_digits"):
            raise ValueError(f"{file}: the Digits pre-tokenizer without individual_digits "
                             "is not supported.")
        steps = steps[1:]
    kinds = [(step or {}).get("type") for step in steps]
    for step in steps:
        if step.get("type") == "ByteLevel" and step.get("add_prefix_space"):
            raise ValueError(f"{file}: ByteLevel's add_prefix_space is not supported.")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2", digits
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        pattern = split.get("pattern", {}).get("Regex")
        names = [name for name, known in PATTERNS.items() if known == pattern]
        if not names:
            raise ValueError(f"{file}: the Split pattern {pattern} is not one tflm reproduces "
                             f"(those of {', '.join(PATTERNS)}).")
        if split.get("behavior") != "Isolated" or split.get("invert"):
            raise ValueError(f"{file}: a Split with behavior {split.get('behavior')!r} and invert "
                             f"{split.get('invert')} is not supported (Isolated, not inverted).")
        return names[0], digits
    raise ValueError(f"{file}: the pre-tokenizer {_short(spec)} is not supported.")


def _normalizer(spec, file):
    """The tokenizer.json normalizer -> BPETokenizer's normalizer (None or "NFC")."""
    steps = spec.get("normalizers", []) if (spec or {}).get("type") == "Sequence" else [spec]
    kinds = [(step or {}).get("type") for step in steps if step is not None]
    if kinds == []:
        return None
    if kinds == ["NFC"]:
        return "NFC"
    raise ValueError(f"{file}: the normalizer {_short(spec)} is not supported (only NFC).")


def _check_added_tokens(added, normalizer, file):
    for token in added:
        flags = [f for f in ("lstrip", "rstrip", "single_word") if token.get(f)]
        if flags:
            raise ValueError(f"{file}: the added token {token['content']!r} sets "
                             f"{', '.join(flags)}, which is not supported.")
        if not token["content"]:
            raise ValueError(f"{file}: an added token (id {token['id']}) is empty.")
        if normalizer and token.get("normalized", True):
            raise ValueError(f"{file}: the added token {token['content']!r} is matched in "
                             f"{normalizer}-normalized text, which is not supported.")
    # `tokenizers` finds the tokens matched on raw text first, then the others between
    # them; with no normalizer that is one pass over all, unless a token of one kind can
    # overlap a token of the other.
    raw = [t["content"] for t in added if not t.get("normalized", True)]
    normalized = [t["content"] for t in added if t.get("normalized", True)]
    for a in raw:
        for b in normalized:
            if _can_overlap(a, b):
                raise ValueError(f"{file}: the added tokens {a!r} (normalized: false) and {b!r} "
                                 "(normalized: true) overlap, which is not supported.")


def _can_overlap(a, b):
    """Whether occurrences of `a` and `b` in some text can share a character."""
    if a in b or b in a:
        return True
    return any(a.endswith(b[:i]) or b.endswith(a[:i]) for i in range(1, min(len(a), len(b))))


def _special_tokens(file, spec, contents):
    """bos/eos/pad/mask/unk: from tokenizer_config.json beside `file`, or guessed."""
    settings_file = file.parent / "tokenizer_config.json"
    if settings_file.is_file():
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
        specials = {name: _content(settings.get(name)) for name in SPECIAL_NAMES}
    else:
        specials = dict.fromkeys(SPECIAL_NAMES)
        specials["bos_token"] = _first_special(spec.get("post_processor"))
        specials["eos_token"] = "<|endoftext|>" if "<|endoftext|>" in contents else None
    for name, token in specials.items():
        if token is not None and token not in contents:
            raise ValueError(f"{file}: the {name} {token!r} is not one of its added tokens.")
    return specials


def _content(token):
    """A tokenizer_config.json token: a string, or a dict (AddedToken) with its content."""
    return token.get("content") if isinstance(token, dict) else token


def _first_special(post_processor):
    """The special token a TemplateProcessing post-processor puts before a text, if any."""
    if (post_processor or {}).get("type") == "Sequence":
        steps = post_processor.get("processors", [])
        post_processor = next((p for p in steps if p.get("type") == "TemplateProcessing"), None)
    if (post_processor or {}).get("type") != "TemplateProcessing":
        return None
    first = (post_processor.get("single") or [{}])[0]
    return first.get("SpecialToken", {}).get("id")


def _post_processor(tokenizer):
    if tokenizer.bos_token is None:
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                "use_regex": True}
    bos = tokenizer.bos_token

    def text(name, type_id):  # the bos token, then a text
        return [{"SpecialToken": {"id": bos, "type_id": type_id}},
                {"Sequence": {"id": name, "type_id": type_id}}]

    return {
        "type": "TemplateProcessing",
        "single": text("A", 0),
        "pair": text("A", 0) + text("B", 1),
        "special_tokens": {bos: {"id": bos, "ids": [tokenizer.bos_token_id], "tokens": [bos]}},
    }


def _short(spec):
    """A tokenizer.json component as a short string for an error message."""
    text = json.dumps(spec, ensure_ascii=False)
    return text if len(text) <= 300 else text[:300] + "..."
