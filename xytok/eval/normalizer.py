"""Text normalisers applied identically to references and hypotheses before WER/CER.

One normaliser per scoring run, and its name is written into every output, because the choice
alone moves WER noticeably (e.g. X-Codec-2.0#29: ground-truth WER 2.50 vs 1.96).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import unicodedata
from pathlib import Path

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


# Whisper's British->American spelling map (~1,700 words) is a data file, not code: openai-whisper
# ships it as whisper/normalizers/english.json and the openai/whisper-* checkpoints as normalizer.json
# (the same mapping); transformers' EnglishTextNormalizer only applies a map it is given.
WHISPER_SPELLING_REPO = "openai/whisper-large-v3"


def _openai_whisper_english_json() -> Path | None:
    """english.json of an installed openai-whisper package, found without importing it (heavy)."""
    spec = importlib.util.find_spec("whisper")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "normalizers" / "english.json"
        if p.is_file():
            return p
    return None


def _hub_spelling_map() -> Path:
    """normalizer.json of the reference Whisper checkpoint (the HF cache, else a 50 kB download)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(WHISPER_SPELLING_REPO, "normalizer.json"))


def load_spelling_map(path: str | os.PathLike | None = None) -> tuple[dict, str]:
    """(mapping, where it came from): `path`, else openai-whisper's english.json, else the hub's
    normalizer.json. RuntimeError saying what was tried when none is available."""
    if path is not None:
        source = Path(path)
    else:
        source = _openai_whisper_english_json()
        if source is None:
            try:
                source = _hub_spelling_map()
            except Exception as e:  # noqa: BLE001 - offline, no cache, hub error: all mean "not available"
                raise RuntimeError(
                    "Whisper's English spelling map was not found: openai-whisper is not installed and "
                    f"{WHISPER_SPELLING_REPO}/normalizer.json could not be fetched ({type(e).__name__}: {e}); "
                    "pass --normalizer_spelling_map FILE (english.json / normalizer.json), or use "
                    "--normalizer whisper_english_nospelling") from e
    try:
        mapping = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RuntimeError(f"spelling map {source}: cannot read it as JSON ({e})") from e
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise RuntimeError(f"spelling map {source}: expected a JSON object of word -> word")
    return mapping, str(source)


class WhisperEnglishNormalizer:
    """`whisper_english`: Whisper's English normaliser (transformers' EnglishTextNormalizer, as in
    Whisper's and several codec papers' evaluations: standardises numbers, removes fillers and
    bracketed text, expands contractions) WITH Whisper's British->American spelling map
    (see `load_spelling_map`); the map's source and size are in the description."""

    name = "whisper_english"

    def __init__(self, spelling_map: str | os.PathLike | None = None):
        mapping, source = load_spelling_map(spelling_map)
        self._norm = _english_text_normalizer(mapping)
        digest = hashlib.sha1(json.dumps(mapping, sort_keys=True).encode()).hexdigest()[:12]
        self.description = ("whisper_english: transformers.models.whisper.english_normalizer.EnglishTextNormalizer "
                            f"with Whisper's spelling map ({len(mapping)} entries, sha1 {digest}, from {source})")

    def __call__(self, text: str) -> str:
        return " ".join(self._norm(text).split())


class WhisperEnglishNoSpellingNormalizer(WhisperEnglishNormalizer):
    """`whisper_english_nospelling`: the same EnglishTextNormalizer with an empty spelling map (British
    spellings stay as they are): named apart because it is not Whisper's normaliser."""

    name = "whisper_english_nospelling"
    description = ("whisper_english_nospelling: transformers.models.whisper.english_normalizer.EnglishTextNormalizer "
                   "WITHOUT the British->American spelling map")

    def __init__(self, spelling_map=None):
        if spelling_map is not None:
            raise ValueError("whisper_english_nospelling takes no spelling map (use whisper_english)")
        self._norm = _english_text_normalizer({})


def _english_text_normalizer(mapping: dict):
    try:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the whisper_english normalizers need transformers (pip install transformers)") from e
    return EnglishTextNormalizer(mapping)


# Scripts written without spaces between words whose characters are split into one token each:
# Han (CJK Unified Ideographs, Extensions A-H, compatibility ideographs; 々 and 〇 with them),
# Hiragana and Katakana (ー included; half-width Katakana becomes full-width under NFKC).
# Hangul is NOT split: Korean writes spaces between words. Thai, Lao, Burmese, Khmer are not split
# either (no dictionary-free word segmentation); they are scored by CER, which ignores spaces.
_SPLIT_CHARS = ("\u3005\u3007\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                "\uf900-\ufaff\U00020000-\U0003134f")
_SPLIT_RE = re.compile(f"([{_SPLIT_CHARS}])")
_SPACE_NEXT_TO_SPLIT_RE = re.compile(f"(?<=[{_SPLIT_CHARS}]) +| +(?=[{_SPLIT_CHARS}])")


def join_split_chars(text: str) -> str:
    """Drop the spaces `basic_multilingual` put next to Han/kana characters ("我 用 iphone 拍 照" ->
    "我用iphone拍照"); spaces between other words stay. For character-level models (the probe)."""
    return _SPACE_NEXT_TO_SPLIT_RE.sub("", text)


class BasicMultilingualNormalizer:
    """`basic_multilingual`: for any language. NFKC (full-width letters, digits and punctuation ->
    their half-width forms, U+3000 -> space); lower-case (scripts without case are unchanged);
    apostrophes unified and kept only word-internally, as in basic_english; every other punctuation
    or symbol character (Unicode categories P* and S*: ASCII, full-width and CJK punctuation such as
    。，、？！：；「」『』《》（）) -> space; format characters (Cf) removed; Han, Hiragana and
    Katakana characters split into one token each; other words split on whitespace (Hangul, Thai, ...
    stay as written). Numbers are not converted, so 二十 and 20 differ; "3.5" becomes "3 5"."""

    name = "basic_multilingual"
    description = ("basic_multilingual: NFKC (full-width -> half-width), lower-case, apostrophes kept only "
                   "word-internally, all other punctuation and symbols (incl. full-width and CJK punctuation) -> "
                   "space, Han/Hiragana/Katakana characters split into one token each (Hangul and other "
                   "scripts split on whitespace only), numbers are not converted, so 二十 and 20 differ")

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).lower()
        for ch in _APOSTROPHES:
            text = text.replace(ch, "'")
        out = []
        for c in text:
            cat = unicodedata.category(c)
            if c == "'" or cat[0] in "LMN":
                out.append(c)
            elif cat != "Cf":  # zero-width joiners and the like vanish; everything else separates
                out.append(" ")
        text = re.sub(r"(?<![^\W_])'|'(?![^\W_])", " ", "".join(out))
        return " ".join(_SPLIT_RE.sub(r" \1 ", text).split())


class IdentityNormalizer:
    """`none`: whitespace collapsed only."""

    name = "none"
    description = "none: whitespace collapsed only"

    def __call__(self, text: str) -> str:
        return " ".join(text.split())


NORMALIZERS = {
    "basic_english": BasicEnglishNormalizer,
    "whisper_english": WhisperEnglishNormalizer,
    "whisper_english_nospelling": WhisperEnglishNoSpellingNormalizer,
    "basic_multilingual": BasicMultilingualNormalizer,
    "none": IdentityNormalizer,
}


def base_language(language: str) -> str:
    """ISO code without region: "zh-CN" -> "zh", "pt_BR" -> "pt" (Common Voice names locales so)."""
    return language.replace("_", "-").split("-")[0].strip().lower()


def default_normalizer(language: str = "en") -> str:
    """`auto`: basic_english for English, basic_multilingual for every other language."""
    return "basic_english" if base_language(language) == "en" else "basic_multilingual"


def get_normalizer(name: str, spelling_map: str | os.PathLike | None = None, language: str = "en"):
    """The normaliser `name` ("auto": `default_normalizer(language)`); `spelling_map` (a JSON file)
    only for whisper_english."""
    if name == "auto":
        name = default_normalizer(language)
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {name!r}; choose from {sorted(NORMALIZERS)}")
    if name == "whisper_english":
        return WhisperEnglishNormalizer(spelling_map)
    if spelling_map is not None:
        raise ValueError(f"a spelling map is only used by whisper_english, not {name!r}")
    return NORMALIZERS[name]()
