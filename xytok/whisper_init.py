"""Initialise the semantic/acoustic encoders from a Hugging Face Whisper checkpoint.

The paper initialises both encoder towers from Whisper-small. Our encoders keep the released
XY-Tokenizer module names, which follow Whisper's own layout, so the mapping is one to one:

    HF WhisperEncoder key                     our encoder key
    conv1.{weight,bias}, conv2.{weight,bias}  same
    embed_positions.weight                    positional_embedding   (Whisper's sinusoid table)
    layers.N.self_attn.{q,k,v,out}_proj.*     same (k_proj has no bias in both)
    layers.N.{self_attn_layer_norm,fc1,fc2,final_layer_norm}.*   same
    layer_norm.{weight,bias}                  same

Masks: HF's WhisperEncoder ignores any attention mask and always attends over all 1500 steps of
a 30-s-padded input, while our encoder masks attention to the valid length and zeroes the padded
steps. The two agree exactly on a full 3000-frame input (length 3000); on shorter valid lengths
ours matches the official XY-Tokenizer, not HF.

Usage::

    from xytok import load_codec
    from xytok.whisper_init import load_whisper_encoder_into
    codec = load_codec("conf/model.yaml")            # random init
    report = load_whisper_encoder_into(codec, "openai/whisper-small")   # or a local HF dir

or, to write an initial checkpoint::

    python -m xytok.whisper_init --config conf/model.yaml --whisper openai/whisper-small --output init.ckpt
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import OrderedDict
from typing import Dict, Iterable, Tuple

import torch

from xytok.hub import offline_hint, resolve_pretrained

logger = logging.getLogger(__name__)

DEFAULT_TOWERS = ("semantic_encoder", "acoustic_encoder")

# Whisper-specific key names that differ from ours; all others map unchanged.
_RENAMES = {"embed_positions.weight": "positional_embedding"}


class WhisperInitError(ValueError):
    """The Whisper checkpoint does not fit the target encoder (names what differs)."""


def hf_to_ours(hf_key: str) -> str:
    return _RENAMES.get(hf_key, hf_key)


def _import_transformers():
    try:
        from transformers import WhisperModel
    except ImportError as e:
        raise ImportError("Whisper initialisation needs Hugging Face transformers: "
                          "pip install xytok[hf]  (or pip install transformers)") from e
    return WhisperModel


def load_hf_whisper_encoder(name_or_path, **from_pretrained_kwargs) -> Tuple[Dict[str, torch.Tensor], dict, str]:
    """(encoder state dict, config summary, source description) of a HF Whisper model.

    ``name_or_path`` is a hub name (``openai/whisper-small``), a local ``save_pretrained``
    directory, or an already-built ``WhisperModel``/``WhisperForConditionalGeneration``/
    ``WhisperEncoder`` instance.
    """
    if isinstance(name_or_path, torch.nn.Module):
        model, source = name_or_path, type(name_or_path).__name__
    else:
        WhisperModel = _import_transformers()
        source = str(name_or_path)
        try:
            # a local dir is used as is; HF_HUB_OFFLINE means cache only (xytok.hub)
            path, kwargs = resolve_pretrained(source, "Whisper model")
            model = WhisperModel.from_pretrained(path, **{**kwargs, **from_pretrained_kwargs})
        except OSError as e:
            raise WhisperInitError(f"cannot load Whisper model {source!r} (hub name or local directory "
                                   f"with config.json + weights): {e}{offline_hint()}") from None
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    cfg = getattr(model, "config", None) or getattr(encoder, "config", None)
    summary = {}
    for name in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                 "num_mel_bins", "max_source_positions", "activation_function"):
        summary[name] = getattr(cfg, name, None)
    state = OrderedDict((k, v.detach()) for k, v in encoder.state_dict().items())
    return state, summary, source


def _count_layers(keys: Iterable[str]) -> int:
    idx = {int(k.split(".")[1]) for k in keys if k.startswith("layers.")}
    return max(idx) + 1 if idx else 0


def _our_num_heads(encoder: torch.nn.Module):
    """Attention head count of our encoder, if its attention module exposes it."""
    for name, mod in encoder.named_modules():
        if name.endswith("self_attn"):
            for attr in ("num_heads", "n_heads", "heads", "num_attention_heads", "n_head"):
                val = getattr(mod, attr, None)
                if isinstance(val, int):
                    return val
            return None
    return None


def _describe(state: Dict[str, torch.Tensor]) -> str:
    d = state["conv1.weight"].shape[0] if "conv1.weight" in state else "?"
    mel = state["conv1.weight"].shape[1] if "conv1.weight" in state else "?"
    return f"d_model={d}, {_count_layers(state)} layers, {mel} mel bins"


def map_whisper_state(hf_state: Dict[str, torch.Tensor], encoder: torch.nn.Module, tower: str,
                      source: str, hf_summary: dict) -> "OrderedDict[str, torch.Tensor]":
    """Rename HF encoder keys to ours and check names/shapes against ``encoder``; clear errors."""
    ours = encoder.state_dict()
    mapped = OrderedDict((hf_to_ours(k), v) for k, v in hf_state.items())
    problems = []
    missing = [k for k in ours if k not in mapped]
    unexpected = [k for k in mapped if k not in ours]
    if missing:
        problems.append(f"{len(missing)} of our keys have no Whisper counterpart, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} Whisper keys have no counterpart in {tower}, e.g. {unexpected[:3]}")
    for k in ours:
        if k in mapped and tuple(mapped[k].shape) != tuple(ours[k].shape):
            problems.append(f"shape of {k}: Whisper {tuple(mapped[k].shape)} vs {tower} {tuple(ours[k].shape)}")
    heads = _our_num_heads(encoder)
    hf_heads = hf_summary.get("encoder_attention_heads")
    if heads is not None and hf_heads is not None and heads != hf_heads:
        problems.append(f"attention heads: Whisper {hf_heads} vs {tower} {heads}")
    act = hf_summary.get("activation_function")
    if act is not None and act != "gelu":
        problems.append(f"activation: Whisper uses {act!r}, our encoders use exact 'gelu'")
    if problems:
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise WhisperInitError(
            f"Whisper checkpoint {source!r} ({_describe(hf_state)}, heads={hf_heads}) does not fit "
            f"{tower} ({_describe(ours)}, heads={heads}); pick the Whisper size that matches the "
            f"encoder config (whisper-small = d_model 768, 12 layers, 12 heads):\n  {shown}{more}")
    return OrderedDict((k, mapped[k].to(dtype=ours[k].dtype)) for k in ours)


def load_whisper_encoder_into(codec_or_encoder: torch.nn.Module, name_or_path="openai/whisper-small",
                              towers: Tuple[str, ...] = DEFAULT_TOWERS, **from_pretrained_kwargs) -> dict:
    """Copy a HF Whisper encoder into our encoder tower(s); returns a report of what was mapped.

    ``codec_or_encoder``: an XYTokenizer (``towers`` name its encoder attributes) or a single
    encoder module (``towers`` is then ignored). All towers are checked before any is modified.
    Report: ``{"source", "whisper": {config summary}, "towers": {tower: {our_key: hf_key}}}``.
    """
    hf_state, hf_summary, source = load_hf_whisper_encoder(name_or_path, **from_pretrained_kwargs)
    if hasattr(codec_or_encoder, "conv1") and hasattr(codec_or_encoder, "layers"):
        targets = OrderedDict([(type(codec_or_encoder).__name__, codec_or_encoder)])
    else:
        targets = OrderedDict()
        for tower in towers:
            module = getattr(codec_or_encoder, tower, None)
            if not isinstance(module, torch.nn.Module):
                raise WhisperInitError(f"{type(codec_or_encoder).__name__} has no encoder tower {tower!r}")
            targets[tower] = module
    prepared = {t: map_whisper_state(hf_state, m, t, source, hf_summary) for t, m in targets.items()}
    report = {"source": source, "whisper": hf_summary, "towers": {}}
    reverse = {hf_to_ours(k): k for k in hf_state}
    for tower, module in targets.items():
        module.load_state_dict(prepared[tower], strict=True)
        report["towers"][tower] = OrderedDict((k, reverse[k]) for k in prepared[tower])
        logger.info("initialised %s from Whisper %s (%d tensors)", tower, source, len(prepared[tower]))
    return report


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xytok.whisper_init",
        description="Write an XY-Tokenizer checkpoint whose encoder towers are initialised from a "
                    "Hugging Face Whisper model (the rest random, or from --checkpoint).")
    p.add_argument("--config", required=True, help="model config YAML (generator_params)")
    p.add_argument("--checkpoint", default=None, help="optional starting checkpoint (else random init)")
    p.add_argument("--whisper", default="openai/whisper-small", help="HF hub name or local directory")
    p.add_argument("--towers", default=",".join(DEFAULT_TOWERS), help="comma-separated encoder towers")
    p.add_argument("--output", required=True, help="output checkpoint ({'generator': state_dict})")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from xytok.codec import load_codec

    try:
        codec = load_codec(args.config, args.checkpoint)
    except Exception as e:  # bad config / checkpoint mismatch: one clear message
        logger.error("cannot build the model from %s (checkpoint %s): %s", args.config, args.checkpoint, e)
        return 1
    try:
        report = load_whisper_encoder_into(codec, args.whisper, tuple(t for t in args.towers.split(",") if t))
    except (WhisperInitError, ImportError) as e:
        logger.error("%s", e)
        return 1
    tmp = args.output + ".tmp"
    torch.save({"generator": codec.state_dict()}, tmp)
    os.replace(tmp, args.output)
    logger.info("wrote %s (towers %s from %s)", args.output, ", ".join(report["towers"]), report["source"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
