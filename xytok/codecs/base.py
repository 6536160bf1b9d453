"""The inference interface every codec family implements (xytok.codecs.load_codec_family).

A codec works at its own sample rate: ``encode`` takes 1-D float waveforms at ``sample_rate``
and returns LongTensor codes (nq, T) at ``frame_rate``; ``decode`` maps codes back to a 1-D
waveform at ``sample_rate``; ``embed`` gives the continuous quantised embeddings (T, D) the
text-alignment probe trains on. Callers resample to and from the codec's rate (xytok.audio).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import torch


class CodecSpecError(ValueError):
    """A bad FAMILY:ID spec or family option (unknown family, unsupported --num_quantizers, ...)."""


class Codec:
    """Base class: subclasses set the attributes below in __init__ and implement _encode_one,
    _decode_one and _embed_one (one utterance each; batching would pad, and padding changes the
    output of convolutional codecs near the end of shorter items)."""

    family: str = ""
    name: str = ""             # hub id or directory the weights came from
    sample_rate: int = 0
    frame_rate: float = 0.0    # code frames per second
    num_quantizers: int = 0    # code rows that encode() emits (after --num_quantizers)
    max_quantizers: int = 0    # code rows the model has
    codebook_sizes: List[int] = []  # one size per emitted row
    device = torch.device("cpu")

    # ------------------------------------------------------------------ derived
    @property
    def hop_length(self) -> int:
        """Samples per code frame (sample_rate / frame_rate, rounded)."""
        return int(round(self.sample_rate / self.frame_rate))

    def bps(self, num_rows: Optional[int] = None) -> float:
        """Bits per second of a token stream with the first `num_rows` rows: Σ log2(K_q) × frame rate."""
        n = self.num_quantizers if num_rows is None else int(num_rows)
        return self.bps_of(self.all_codebook_sizes()[:n])

    def bps_of(self, codebook_sizes: Sequence[int]) -> float:
        """Σ log2(K) × frame rate for a stream with these codebooks per frame."""
        return sum(math.log2(k) for k in codebook_sizes) * self.frame_rate

    def describe(self) -> dict:
        """The facts a results table needs (JSON-serialisable)."""
        return {"family": self.family, "model": self.name, "sample_rate": self.sample_rate,
                "frame_rate": self.frame_rate, "num_quantizers": self.num_quantizers,
                "max_quantizers": self.max_quantizers, "codebook_sizes": list(self.codebook_sizes),
                "bps": self.bps()}

    # ------------------------------------------------------------------ checks
    def _fit_length(self, wav: torch.Tensor, frames: int) -> torch.Tensor:
        """Trim or zero-pad a decoded waveform to frames × hop samples (what the codes cover)."""
        n = frames * self.hop_length
        if wav.numel() >= n:
            return wav[:n]
        return torch.nn.functional.pad(wav, (0, n - wav.numel()))

    def _check_wav(self, i: int, w) -> torch.Tensor:
        w = torch.as_tensor(np.asarray(w) if not torch.is_tensor(w) else w)
        if w.dim() != 1:
            raise ValueError(f"item {i}: expected a 1-D waveform, got shape {tuple(w.shape)}")
        if not w.is_floating_point():
            raise ValueError(f"item {i}: expected float samples, got {w.dtype}")
        if not torch.isfinite(w).all():
            raise ValueError(f"item {i}: waveform holds NaN/Inf")
        if w.numel() < self.hop_length:
            raise ValueError(f"item {i}: {w.numel()} samples is shorter than one code frame "
                             f"({self.hop_length} samples at {self.sample_rate} Hz)")
        return w.float().to(self.device)

    def check_codes(self, codes) -> str:
        """Empty string if (n, T) codes can be decoded by this codec (n <= max_quantizers), else why."""
        if codes.ndim != 2:
            return f"codes must be (nq, T), got shape {tuple(codes.shape)}"
        n, t = codes.shape
        if not 1 <= n <= self.max_quantizers:
            return f"wrong number of quantizers: codes have nq={n}, the {self.family} model has {self.max_quantizers}"
        if t == 0:
            return "no frames (T=0)"
        sizes = self.all_codebook_sizes()
        for q in range(n):
            lo, hi = int(codes[q].min()), int(codes[q].max())
            if lo < 0 or hi >= sizes[q]:
                return (f"code index out of range in row {q}: values span [{lo}, {hi}], "
                        f"valid is [0, {sizes[q] - 1}]")
        return ""

    def all_codebook_sizes(self) -> List[int]:
        """Codebook size of every row the model has (codebook_sizes covers only the emitted rows)."""
        return list(self.codebook_sizes) + [self.codebook_sizes[-1]] * (self.max_quantizers - len(self.codebook_sizes))

    def _check_num_quantizers(self, n: Optional[int], allowed: Optional[Sequence[int]] = None) -> int:
        if n is None:
            return self.max_quantizers
        allowed = list(allowed) if allowed is not None else list(range(1, self.max_quantizers + 1))
        if int(n) not in allowed:
            raise CodecSpecError(f"{self.family} {self.name}: --num_quantizers {n} not supported "
                                 f"(this model allows {', '.join(map(str, allowed))})")
        return int(n)

    # ------------------------------------------------------------------ list API
    @torch.inference_mode()
    def encode(self, wavs) -> List[torch.Tensor]:
        """list of 1-D float waveforms at sample_rate -> list of LongTensor (num_quantizers, T) on CPU."""
        return [self._encode_one(self._check_wav(i, w)).long().cpu() for i, w in enumerate(wavs)]

    @torch.inference_mode()
    def decode(self, codes_list) -> List[torch.Tensor]:
        """list of LongTensor (n, T), n <= max_quantizers -> list of 1-D float CPU waveforms at sample_rate."""
        out = []
        for i, c in enumerate(codes_list):
            c = torch.as_tensor(c)
            reason = self.check_codes(c)
            if reason:
                raise ValueError(f"item {i}: {reason}")
            out.append(self._decode_one(c.long().to(self.device)).float().reshape(-1).cpu())
        return out

    @torch.inference_mode()
    def embed(self, wav) -> np.ndarray:
        """One 1-D waveform at sample_rate -> continuous quantised embeddings (T, D) float32,
        from the codes this codec emits (num_quantizers rows)."""
        return self._embed_one(self._check_wav(0, wav)).float().cpu().numpy()

    def _encode_one(self, wav: torch.Tensor) -> torch.Tensor:  # (N,) -> (nq, T)
        raise NotImplementedError

    def _decode_one(self, codes: torch.Tensor) -> torch.Tensor:  # (n, T) -> (N,)
        raise NotImplementedError

    def _embed_one(self, wav: torch.Tensor) -> torch.Tensor:  # (N,) -> (T, D)
        raise NotImplementedError
