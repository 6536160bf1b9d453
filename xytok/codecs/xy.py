"""XY-Tokenizer (ours; the released fdugyt/XY_Tokenizer too) behind the codec interface.

16 kHz in, 12.5 Hz, 8 x 1024 RVQ; out at the decoder's rate (16 kHz as released, 24/32 kHz for
decoders retrained in stage 2): ``sample_rate`` is the rate ``encode``/``embed`` take (16 kHz),
``output_sample_rate`` the rate ``decode`` returns. Long inputs are chunked as the released encode/decode (30-s
windows with ``overlap_seconds`` of look-ahead, xytok.codec). ``num_quantizers`` = n keeps the
first n RVQ layers (codes (n, T); decode sums the first n layers' codewords)."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from xytok.codecs.base import Codec, CodecSpecError

RELEASED = "fdugyt/XY_Tokenizer"


def resolve_xy_source(name_or_dir: str) -> Tuple[str, Optional[str]]:
    """(load_codec's first argument, checkpoint or None) for an xy spec id: ``released`` (the hub
    release), a hub id, a directory (export dir, exp dir, hub snapshot) or a config.yaml with
    model.ckpt / model.safetensors beside it."""
    if name_or_dir == "" or (name_or_dir == "released" and not os.path.exists(name_or_dir)):
        return RELEASED, None  # (a local ./released, e.g. a saved copy, wins)
    if os.path.isfile(name_or_dir) and name_or_dir.endswith((".yaml", ".yml")):
        d = os.path.dirname(name_or_dir)
        for w in ("model.ckpt", "model.safetensors"):
            if os.path.isfile(os.path.join(d, w)):
                return name_or_dir, os.path.join(d, w)
        raise CodecSpecError(f"xy {name_or_dir}: no model.ckpt or model.safetensors beside the config")
    return name_or_dir, None


class XYCodec(Codec):
    family = "xy"

    def __init__(self, name_or_dir: str = "released", device="cpu", revision=None, num_quantizers=None,
                 checkpoint: Optional[str] = None, overlap_seconds: float = 10.0, batch_size: int = 1,
                 codec=None):
        """``codec``: an already loaded XYTokenizer (then name_or_dir only labels it)."""
        self.name = name_or_dir or RELEASED
        self.device = torch.device(device)
        if codec is None:
            from xytok.codec import load_codec

            source, ckpt = resolve_xy_source(name_or_dir)
            try:
                codec = load_codec(source, checkpoint or ckpt, device=str(self.device), revision=revision)
            except Exception as e:  # not found / mismatched weights: one message naming the model
                raise CodecSpecError(f"cannot load the xy model {name_or_dir}: {e}")
        self.codec = codec.eval()
        self.device = codec.device
        self.sample_rate = int(codec.input_sample_rate)  # what encode/embed take
        self.output_sample_rate = int(codec.sample_rate)  # what decode returns
        self.frame_rate = codec.frame_rate
        self.max_quantizers = int(codec.num_quantizers)
        self.num_quantizers = self._check_num_quantizers(num_quantizers)
        self.codebook_sizes = [int(codec.codebook_size)] * self.num_quantizers
        self.overlap_seconds = overlap_seconds
        self.batch_size = batch_size

    def describe(self) -> dict:
        return {**super().describe(), "output_sample_rate": self.output_sample_rate}

    @torch.inference_mode()
    def encode(self, wavs):
        # the whole list in one call: XYTokenizer batches its 30-s chunks
        wavs = [self._check_wav(i, w) for i, w in enumerate(wavs)]
        codes = self.codec.encode(wavs, overlap_seconds=self.overlap_seconds, batch_size=max(self.batch_size, len(wavs)))
        return [c[: self.num_quantizers].long().cpu() for c in codes]

    @torch.inference_mode()
    def decode(self, codes_list):
        codes_list = [torch.as_tensor(c).long() for c in codes_list]
        for i, c in enumerate(codes_list):
            reason = self.check_codes(c)
            if reason:
                raise ValueError(f"item {i}: {reason}")
        n = {c.shape[0] for c in codes_list}
        kw = {}
        if n and min(n) < self.max_quantizers:  # a prefix of the RVQ layers
            kw["num_quantizers"] = min(n)
        wavs = self.codec.decode([c.to(self.device) for c in codes_list], overlap_seconds=self.overlap_seconds,
                                 batch_size=max(self.batch_size, len(codes_list)), **kw)
        return [w.float().reshape(-1).cpu() for w in wavs]

    def _embed_one(self, wav):
        # as the probe's extract_zq: codes from the codec's own encode windowing, then the eval
        # quantizer output for the first num_quantizers layers (sum of codewords, projected)
        codes = self.codec.encode([wav], overlap_seconds=self.overlap_seconds)[0][: self.num_quantizers]
        zq = self.codec.decode_codes(codes.unsqueeze(1).to(self.device))  # (1, C, T)
        return zq[0].transpose(0, 1)
