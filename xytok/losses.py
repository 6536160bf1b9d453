"""Reconstruction losses shared by stage 1 and stage 2: multi-scale log-mel L1 (no torchaudio).

Mel filter banks come from xytok.frontend.mel_filters (the same slaney builder as the model's
front end), so every resolution uses one filter implementation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from xytok.frontend import mel_filters

# (n_fft, hop, n_mels): from 32 ms to 128 ms windows; small n_fft gets fewer bands (no empty filters).
DEFAULT_RESOLUTIONS = ((512, 128, 64), (1024, 256, 80), (2048, 512, 128))


def scaled_resolutions(resolutions: Sequence[Sequence[int]], sample_rate: int) -> list:
    """(n_fft, hop, n_mels) given at 16 kHz, with n_fft and hop scaled to `sample_rate` (same window
    and hop durations; n_mels kept, the bands then reach sample_rate / 2). Unchanged at 16 kHz."""
    if int(sample_rate) % 8000:
        raise ValueError(f"mel resolutions scale to multiples of 8 kHz, got {sample_rate} Hz")
    return [(int(n) * int(sample_rate) // 16000, int(h) * int(sample_rate) // 16000, int(m))
            for n, h, m in resolutions]


def frame_mask(lengths: Optional[torch.Tensor], hop: int, frames: int, device) -> Optional[torch.Tensor]:
    """(B, frames) bool: frame t is valid if it starts inside the item's samples."""
    if lengths is None:
        return None
    valid = torch.div(lengths.to(device) + hop - 1, hop, rounding_mode="floor")
    return torch.arange(frames, device=device).unsqueeze(0) < valid.unsqueeze(1)


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean |a-b| over (B, C, T) restricted to mask (B, T)."""
    diff = (a - b).abs()
    if mask is None:
        return diff.mean()
    m = mask.unsqueeze(1).to(diff.dtype)
    return (diff * m).sum() / (m.sum() * diff.shape[1]).clamp(min=1.0)


class MelSpectrogram(nn.Module):
    """log(clamp(mel power/magnitude)) with a Hann window, centered frames, our own filters."""

    def __init__(self, n_fft: int, hop: int, n_mels: int, sample_rate: int = 16000, power: float = 1.0,
                 f_max: Optional[float] = None, log_floor: float = 1e-5):
        super().__init__()
        self.n_fft, self.hop, self.power, self.log_floor = n_fft, hop, power, log_floor
        fb = mel_filters(n_fft=n_fft, n_mels=n_mels, sample_rate=sample_rate, f_min=0.0,
                         f_max=float(f_max or sample_rate / 2))
        self.register_buffer("filters", torch.tensor(fb, dtype=torch.float32).T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, n_mels, frames)
        spec = torch.stft(wav.float(), self.n_fft, self.hop, window=self.window, center=True,
                          pad_mode="reflect" if wav.shape[-1] > self.n_fft // 2 else "constant",
                          return_complex=True)
        mag = spec.abs().clamp(min=1e-9) ** self.power
        mel = torch.matmul(self.filters, mag)
        return torch.log(mel.clamp(min=self.log_floor))


class MultiScaleMelLoss(nn.Module):
    """Mean over resolutions of L1 between log-mels of prediction and target waveforms."""

    def __init__(self, resolutions: Sequence[Sequence[int]] = DEFAULT_RESOLUTIONS, sample_rate: int = 16000):
        super().__init__()
        if not resolutions:
            raise ValueError("MultiScaleMelLoss needs at least one (n_fft, hop, n_mels) resolution")
        self.mels = nn.ModuleList(MelSpectrogram(int(n), int(h), int(m), sample_rate) for n, h, m in resolutions)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if pred.shape != target.shape:
            n = min(pred.shape[-1], target.shape[-1])
            pred, target = pred[..., :n], target[..., :n]
        total = pred.new_zeros(())
        for mel in self.mels:
            p, t = mel(pred), mel(target)
            total = total + masked_l1(p, t, frame_mask(lengths, mel.hop, p.shape[-1], p.device))
        return total / len(self.mels)


def feature_l1(pred_mel: torch.Tensor, target_mel: torch.Tensor, mel_lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """L1 between the decoder's 100 Hz features and the input log-mel, over valid frames."""
    n = min(pred_mel.shape[-1], target_mel.shape[-1])
    pred_mel, target_mel = pred_mel[..., :n], target_mel[..., :n]
    mask = None
    if mel_lengths is not None:
        mask = torch.arange(n, device=pred_mel.device).unsqueeze(0) < mel_lengths.to(pred_mel.device).unsqueeze(1)
    return masked_l1(pred_mel.float(), target_mel.float(), mask)
