"""Speech codecs behind one inference interface (xytok.codecs.base.Codec), one module per family.

    from xytok.codecs import load_codec_family
    codec = load_codec_family("dac:descript/dac_16khz", num_quantizers=8)
    codes = codec.encode([wav_at_codec_rate])[0]        # LongTensor (nq, T)
    wav = codec.decode([codes])[0]                      # 1-D, codec.sample_rate
    feats = codec.embed(wav_at_codec_rate)              # (T, D) continuous quantised embeddings
    codec.bps()                                         # Σ log2(codebook size) × frame rate

A spec is ``FAMILY:ID_OR_DIR``; without a known family prefix it is ``xy`` (ours), so hub ids
(``org/name``) and paths keep working. ``xy:released`` is the released fdugyt/XY_Tokenizer.
"""
from __future__ import annotations

import importlib
from typing import Tuple

from xytok.codecs.base import Codec, CodecSpecError

# family -> (module, class, what it is)
FAMILIES = {
    "xy": ("xytok.codecs.xy", "XYCodec", "XY-Tokenizer (ours / released), 16 kHz, 12.5 Hz, 8x1024 RVQ"),
    "dac": ("xytok.codecs.dac", "DacCodec", "DAC via transformers.DacModel"),
    "encodec": ("xytok.codecs.encodec", "EncodecCodec", "EnCodec via transformers.EncodecModel"),
    "mimi": ("xytok.codecs.mimi", "MimiCodec", "Mimi via transformers.MimiModel"),
    "xcodec2": ("xytok.codecs.xcodec2", "Xcodec2Codec", "X-Codec 2.0 via transformers.Xcodec2Model, 16 kHz, 50 Hz, 1 FSQ codebook"),
    "speechtokenizer": ("xytok.codecs.speechtokenizer", "SpeechTokenizerCodec",
                        "SpeechTokenizer via the speechtokenizer package, 16 kHz, 50 Hz, 8x1024 RVQ (layer 0 semantic)"),
    "bigcodec": ("xytok.codecs.bigcodec", "BigCodecCodec", "BigCodec from its released bigcodec.pt, 16 kHz, 80 Hz, 1x8192 VQ"),
}


def parse_spec(spec: str) -> Tuple[str, str]:
    """'FAMILY:ID_OR_DIR' -> (family, id); no known family prefix -> ('xy', spec)."""
    spec = (spec or "").strip()
    if ":" in spec:
        family, rest = spec.split(":", 1)
        if family in FAMILIES:
            return family, rest
        if "/" not in family and not family.startswith("."):  # 'foo:bar' looks like a family prefix
            raise CodecSpecError(f"unknown codec family {family!r} in {spec!r} (known: {', '.join(FAMILIES)})")
    return "xy", spec


def spec_label(spec: str) -> str:
    """A file-name-safe label for a spec (one exp dir per model): 'dac:exp/x/dac_tiny' -> 'dac_dac_tiny'."""
    import re

    family, ident = parse_spec(spec)
    base = ident.rstrip("/").split("/")[-1] or "released"
    if base in ("export",):  # exp/<name>/export -> <name>
        base = ident.rstrip("/").split("/")[-2]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{family}_{base}")


def load_codec_family(spec: str, device="cpu", revision=None, num_quantizers=None, **kwargs) -> Codec:
    """Build the codec a spec names (weights by hub id or local directory)."""
    family, ident = parse_spec(spec)
    module, cls, _ = FAMILIES[family]
    if not ident and family != "xy":
        raise CodecSpecError(f"{spec!r}: give the {family} model as {family}:HUB_ID_OR_DIR")
    return getattr(importlib.import_module(module), cls)(ident, device=device, revision=revision,
                                                         num_quantizers=num_quantizers, **kwargs)


__all__ = ["Codec", "CodecSpecError", "FAMILIES", "parse_spec", "spec_label", "load_codec_family"]
