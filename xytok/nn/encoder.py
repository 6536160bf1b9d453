"""Whisper-style audio encoder (semantic and acoustic towers share this structure).

mel (B, 80, T100) -> Conv1d k3 + GELU -> Conv1d k3 stride 2 + GELU -> positional table ->
masked pre-LN Transformer -> final LN -> padded steps zeroed -> (B, D, T50).
The module names are the released ones (conv1, conv2, positional_embedding, layers.N.*, layer_norm)
so a Hugging Face Whisper encoder maps onto it key by key.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from xytok.nn.transformer import TransformerStack


class AudioEncoder(TransformerStack):
    def __init__(self, num_mel_bins: int = 80, sampling_rate: int = 16000, hop_length: int = 160,
                 stride_size: int = 2, kernel_size: int = 3, d_model: int = 768,
                 scale_embedding: bool = False, max_audio_seconds: int = 30, encoder_layers: int = 12,
                 encoder_attention_heads: int = 12, encoder_ffn_dim: int = 3072,
                 activation_function: str = "gelu"):
        super().__init__()
        if activation_function != "gelu":
            raise ValueError(f"only activation_function='gelu' is supported, got {activation_function!r}")
        # scale_embedding is accepted for config compatibility; the released model never applies it.
        self.stride_size = stride_size
        self.conv1 = nn.Conv1d(num_mel_bins, d_model, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size, stride=stride_size, padding=kernel_size // 2)
        max_positions = max_audio_seconds * sampling_rate // hop_length // stride_size
        self.build_stack(d_model, encoder_layers, encoder_attention_heads, encoder_ffn_dim, max_positions)

    def output_lengths(self, mel_lengths: torch.Tensor) -> torch.Tensor:
        return mel_lengths // self.stride_size

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor):
        """mel (B, 80, T) -> (hidden (B, D, ceil(T/2)), lengths = mel_lengths // 2).

        Steps past ``lengths`` are zero. The valid steps depend on mel frames < mel_length + 1
        only (the k3 convolutions look one frame past the end), so T may be trimmed to
        mel_length + 2 frames without changing them.
        """
        h = F.gelu(self.conv1(mel))
        h = F.gelu(self.conv2(h))
        lengths = self.output_lengths(mel_lengths)
        h = self.run_layers(h.transpose(1, 2), lengths)
        return h.transpose(1, 2), lengths
