"""BERT's text normalization as code point tables, for tokenizers written in core TensorFlow ops.

The rules are BERT's BasicTokenizer (Hugging Face's BertNormalizer + BertPreTokenizer):
drop U+0000, U+FFFD and control characters (Unicode category C* but \\t \\n \\r), read
whitespace as a space, put spaces around CJK ideographs, strip accents (NFD, then drop
category Mn), lowercase, then split on whitespace and punctuation. No compatibility
normalization: full-width "Ｆ" stays "Ｆ".

The tables come from Python's `unicodedata` once per process (about a second; cached).
Where Python's Unicode version and the reference's differ, these tables follow BERT's
definitions on Python's Unicode data; see `character_flags` for what that changes.
"""

import functools
import sys
import unicodedata

import numpy as np

# Flags of a code point (bits of `character_flags`).
REMOVED = 1  # dropped before anything else (and accents, when they are stripped)
WHITESPACE = 2  # a word boundary
PUNCTUATION = 4  # a word of its own
CJK = 8  # a word of its own (BERT puts spaces around it)
CHANGED = 16  # lowercasing or accent stripping change it: see `character_mapping`
FLAG_BITS = 5

# BERT's CJK ideograph blocks (google-research/bert tokenization.py `_is_chinese_char`).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)

# Hangul syllables decompose (NFD) by arithmetic, not by table (Unicode 3.12): syllable
# s = code - HANGUL_FIRST becomes jamo 0x1100 + s // 588, 0x1161 + s % 588 // 28, and
# 0x11A7 + s % 28 unless that is 0x11A7 (no final consonant).
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3

# A code point maps to at most this many (NFD gives up to 3 after dropping marks).
MAX_MAPPED = 3


@functools.cache
def _categories():
    return [unicodedata.category(chr(code)) for code in range(sys.maxunicode + 1)]


@functools.cache
def _base_flags():
    categories = np.array(_categories())
    first_letter = categories.astype("<U1")
    flags = np.zeros(len(categories), np.int32)
    # Unassigned code points (Cn) are kept: the reference keeps them, and a newer
    # Unicode may have assigned them since. Surrogates (Cs) never reach a tokenizer.
    flags[(first_letter == "C") & (categories != "Cn")] = REMOVED
    flags[[0x0, 0xFFFD]] = REMOVED
    flags[[ord("\t"), ord("\n"), ord("\r")]] = WHITESPACE
    # Zs, U+2028, U+2029: Python's other spaces are control characters, removed above.
    spaces = [code for code in range(len(flags)) if chr(code).isspace()]
    flags[[code for code in spaces if flags[code] == 0]] = WHITESPACE
    flags[first_letter == "P"] |= PUNCTUATION
    # ASCII symbols count as punctuation ("$", "^", "`", ...), as in BERT.
    for first, last in ((33, 47), (58, 64), (91, 96), (123, 126)):
        flags[first : last + 1] |= PUNCTUATION
    for first, last in CJK_RANGES:
        flags[first : last + 1] |= CJK
    return flags


@functools.cache
def character_flags(lowercase, strip_accents):
    """`(starts, flags)`: code point c has flags `flags[searchsorted(starts, c, "right") - 1]`.

    A run-length table over all code points (a few thousand runs). Limits against the
    reference (Hugging Face `tokenizers`, whose categories are older than Python 3.11's
    Unicode 14): some 800 code points assigned since Unicode 9 (rare Arabic marks, new
    punctuation, format characters) and CJK Extension E's U+2B820-U+2B91F (a typo in its
    CJK range) are classified differently there.
    """
    flags = _base_flags().copy()
    keys, _ = character_mapping(lowercase, strip_accents)
    flags[keys] |= CHANGED
    if strip_accents:
        flags[HANGUL_FIRST : HANGUL_LAST + 1] |= CHANGED
        flags[np.array(_categories()) == "Mn"] |= REMOVED
    starts = np.flatnonzero(np.diff(flags, prepend=-1)).astype(np.int32)
    return starts, flags[starts]


def _changed(character, lowercase, strip_accents):
    text = character
    if strip_accents:
        text = "".join(
            c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
        )
    if lowercase:
        # One character at a time: the reference has no final-sigma rule (Σ -> σ always).
        text = "".join(c.lower() for c in text)
    return text


@functools.cache
def character_mapping(lowercase, strip_accents):
    """`(keys, values)`: code point `keys[i]` becomes the code points `values[i]` that are not -1.

    `values` is (len(keys), MAX_MAPPED). Only the code points that lowercasing and accent
    stripping change into something (a few thousand): not the marks that stripping drops
    (REMOVED in `character_flags`), nor Hangul syllables (arithmetic, see HANGUL_FIRST).
    A character maps the same way wherever it is, so the reference's order (strip, then
    lowercase) and BERT's (lowercase, then strip) agree on every code point. Not modelled:
    NFD's reordering of two adjacent combining marks that both survive stripping (only
    non-Mn marks, such as some musical symbols), and lowercase mappings of characters
    newer than Python's Unicode.
    """
    keys, values = [], []
    if lowercase or strip_accents:
        for code, category in enumerate(_categories()):
            character = chr(code)
            maybe = (lowercase and character.lower() != character) or (
                strip_accents and not unicodedata.is_normalized("NFD", character)
            )
            if not maybe or category == "Cs" or (strip_accents and category == "Mn"):
                continue
            if strip_accents and HANGUL_FIRST <= code <= HANGUL_LAST:
                continue
            text = _changed(character, lowercase, strip_accents)
            if text != character:
                assert 1 <= len(text) <= MAX_MAPPED, (character, text)
                keys.append(code)
                values.append([ord(c) for c in text] + [-1] * (MAX_MAPPED - len(text)))
    return np.array(keys, np.int32), np.array(values, np.int32).reshape(-1, MAX_MAPPED)
