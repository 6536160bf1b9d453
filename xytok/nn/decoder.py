"""Acoustic decoder: masked Transformer at 50 Hz, then two transposed convs up to 100 Hz mel-like
features (GELU-activated, 80 channels) for the Vocos vocoder.

Streaming option: ``causal=True, chunk_frames=F`` (50 Hz frames; F = 4 x the post-RVQ adapter's
chunk for the released x4 upsample) makes the Transformer strictly chunk-causal (no look-ahead: that
is the adapter's first layer's job, xytok.nn.transformer). The two transposed convs are causal
already: output step n of deconv1 (k3, s2) reads inputs <= n // 2, deconv2 (k3, s1) reads <= n.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from xytok.nn.transformer import TransformerStack


class AudioDecoder(TransformerStack):
    def __init__(self, num_mel_bins: int = 80, sampling_rate: int = 16000, hop_length: int = 160,
                 stride_size: int = 2, kernel_size: int = 3, d_model: int = 768,
                 scale_embedding: bool = False, max_audio_seconds: int = 30, decoder_layers: int = 12,
                 decoder_attention_heads: int = 12, decoder_ffn_dim: int = 3072,
                 activation_function: str = "gelu", causal: bool = False, chunk_frames: int = 0):
        super().__init__()
        if activation_function != "gelu":
            raise ValueError(f"only activation_function='gelu' is supported, got {activation_function!r}")
        self.stride_size = stride_size
        # No padding: 2T+1 then 2T+3 steps, cut to 2T (as released).
        self.deconv1 = nn.ConvTranspose1d(d_model, d_model, kernel_size, stride=stride_size)
        self.deconv2 = nn.ConvTranspose1d(d_model, num_mel_bins, kernel_size, stride=1)
        max_positions = max_audio_seconds * sampling_rate // hop_length // stride_size
        self.build_stack(d_model, decoder_layers, decoder_attention_heads, decoder_ffn_dim, max_positions,
                         causal, chunk_frames)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x (B, D, T) -> (features (B, 80, 2T), lengths * 2)."""
        t = x.shape[2]
        h = self.run_layers(x.transpose(1, 2), lengths).transpose(1, 2)
        h = F.gelu(self.deconv1(h))
        h = F.gelu(self.deconv2(h))
        return h[:, :, : t * self.stride_size], lengths * self.stride_size
