"""Vocos vocoder: ConvNeXt backbone + ISTFT head (n_fft 640, hop 160, "same" padding) at 16 kHz.

Streaming option ``causal=True``: the embedding conv and every ConvNeXt depthwise conv (kernel 7)
pad 6 steps on the left instead of 3 on each side, so frame m depends on frames <= m only (same
weights and shapes, so a causal Vocos can start from a non-causal one). The ISTFT head is left as
is: sample s needs frames <= (s + (n_fft - hop) / 2) // hop, a fixed tail that xytok.streaming
holds back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


KERNEL_SIZE = 7


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate_dim: int, layer_scale_init_value: float, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=KERNEL_SIZE, padding=0 if causal else KERNEL_SIZE // 2,
                                groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T) -> (B, C, T)."""
        return x + self.branch(self.dwconv(F.pad(x, (KERNEL_SIZE - 1, 0)) if self.causal else x))

    def branch(self, conv_out: torch.Tensor) -> torch.Tensor:
        """The residual branch after the depthwise conv (pointwise in time; the streaming decoder
        runs the conv on its own left-context buffer, then this)."""
        h = self.norm(conv_out.transpose(1, 2))
        h = self.pwconv2(F.gelu(self.pwconv1(h))) * self.gamma
        return h.transpose(1, 2)


class VocosBackbone(nn.Module):
    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int,
                 causal: bool = False):
        super().__init__()
        self.causal = causal
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=KERNEL_SIZE,
                               padding=0 if causal else KERNEL_SIZE // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, 1.0 / num_layers, causal) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, input_channels, T) -> (B, T, dim)."""
        h = self.norm(self.embed(F.pad(x, (KERNEL_SIZE - 1, 0)) if self.causal else x).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            h = block(h)
        return self.final_layer_norm(h.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: exactly T*hop samples for T frames."""

    def __init__(self, n_fft: int, hop_length: int, padding: str = "same"):
        super().__init__()
        if padding != "same":
            raise ValueError(f"only padding='same' is supported, got {padding!r}")
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (B, n_fft//2+1, T) complex -> (B, T*hop) real."""
        frames = spec.shape[-1]
        pad = (self.n_fft - self.hop_length) // 2
        chunks = self.windowed_frames(spec)
        out_len = (frames - 1) * self.hop_length + self.n_fft
        y = F.fold(chunks, output_size=(1, out_len), kernel_size=(1, self.n_fft),
                   stride=(1, self.hop_length))[:, 0, 0, pad:-pad]
        win_sq = self.window.square()[None, :, None].expand(1, -1, frames)
        envelope = F.fold(win_sq, output_size=(1, out_len), kernel_size=(1, self.n_fft),
                          stride=(1, self.hop_length)).squeeze()[pad:-pad]
        return y / envelope

    def windowed_frames(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (B, n_fft//2+1, T) -> (B, n_fft, T): each frame's windowed inverse FFT, before
        overlap-add."""
        return torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]


class ISTFTHead(nn.Module):
    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: str = "same"):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim) -> waveform (B, T*hop). Log-magnitude (exp, clipped at 100) and phase."""
        return self.istft(self.spectrum(x))

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim) -> complex spectrum (B, n_fft//2+1, T), frame by frame."""
        h = self.out(x).transpose(1, 2)
        log_mag, phase = h.chunk(2, dim=1)
        mag = torch.clip(torch.exp(log_mag), max=1e2)
        return mag * (torch.cos(phase) + 1j * torch.sin(phase))


class Vocos(nn.Module):
    def __init__(self, input_channels: int = 80, dim: int = 512, intermediate_dim: int = 4096,
                 num_layers: int = 30, n_fft: int = 640, hop_size: int = 160, padding: str = "same",
                 causal: bool = False):
        super().__init__()
        if not isinstance(causal, bool):
            raise ValueError(f"Vocos: causal must be true or false, got {causal!r}")
        self.hop_size, self.causal = hop_size, causal
        self.backbone = VocosBackbone(input_channels, dim, intermediate_dim, num_layers, causal)
        self.head = ISTFTHead(dim, n_fft, hop_size, padding)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """features (B, 80, T) -> (wav (B, 1, T*hop), lengths * hop). No masking: padded frames
        leak into the last valid samples (as released), so decode items at their own length."""
        return self.head(self.backbone(x))[:, None, :], lengths * self.hop_size
