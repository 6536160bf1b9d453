"""Text normalisers applied identically to references and hypotheses before WER.

One normaliser per scoring run, and its name is written into every output, because the choice
alone moves WER noticeably (e.g. X-Codec-2.0#29: ground-truth WER 2.50 vs 1.96).
"""
from __future__ import annotations

import re
import unicodedata

# Apostrophe-like characters folded to a plain ASCII apostrophe.
_APOSTROPHES = "\u2019\u2018\u02bc\u0060\u00b4"


class BasicEnglishNormalizer:
    """`basic_english`: NFKC; lower-case; curly/backtick apostrophes -> '; every character that is not
    a letter, digit, apostrophe or whitespace -> space; apostrophes not between two letters/digits
    removed ("'tis" -> "tis", "don't" kept); whitespace collapsed. Numbers are left as they are
    (no digit<->word conversion); hyphenated words split ("well-known" -> "well known")."""

    name = "basic_english"
    description = ("basic_english: NFKC, lower-case, apostrophes unified and kept only word-internally, "
                   "all other punctuation -> space, whitespace collapsed, numbers left as is")

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).lower()
        for ch in _APOSTROPHES:
            text = text.replace(ch, "'")
        text = "".join(c if (c.isalnum() or c == "'" or c.isspace()) else " " for c in text)
        text = re.sub(r"(?<![^\W_])'|'(?![^\W_])", " ", text)  # drop non word-internal apostrophes
        return " ".join(text.split())


class WhisperEnglishNormalizer:
    """`whisper_english`: transformers' Whisper EnglishTextNormalizer (the one used by Whisper's and
    several codec papers' evaluations: spells out/standardises numbers, British->American spelling
    when the mapping is available, removes fillers)."""

    name = "whisper_english"
    description = "whisper_english: transformers.models.whisper.english_normalizer.EnglishTextNormalizer"

    def __init__(self, spelling_mapping: dict | None = None):
        try:
            from transformers.models.whisper.english_normalizer import EnglishTextNormalizer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError("normalizer 'whisper_english' needs transformers (pip install transformers)") from e
        self._norm = EnglishTextNormalizer(spelling_mapping or {})

    def __call__(self, text: str) -> str:
        return " ".join(self._norm(text).split())


class IdentityNormalizer:
    """`none`: whitespace collapsed only."""

    name = "none"
    description = "none: whitespace collapsed only"

    def __call__(self, text: str) -> str:
        return " ".join(text.split())


NORMALIZERS = {
    "basic_english": BasicEnglishNormalizer,
    "whisper_english": WhisperEnglishNormalizer,
    "none": IdentityNormalizer,
}


def get_normalizer(name: str):
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {name!r}; choose from {sorted(NORMALIZERS)}")
    return NORMALIZERS[name]()
