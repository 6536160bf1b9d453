"""Adapter from the codec's quantised features (12.5 Hz, after post_rvq_adapter) to the LM width."""
from __future__ import annotations

import torch
import torch.nn as nn


class AudioToLMAdapter(nn.Module):
    """Linear -> optional strided conv (fewer prefix tokens) -> small Transformer encoder -> Linear.

    forward(x (B, in_dim, T), lengths (B,)) -> (embeds (B, T', lm_dim), lengths' (B,))
    """

    def __init__(self, in_dim: int, lm_dim: int, d_model: int = 256, num_layers: int = 2, num_heads: int = 4,
                 ffn_dim: int = 1024, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.stride = stride
        self.input_proj = nn.Linear(in_dim, d_model)
        self.down = nn.Conv1d(d_model, d_model, kernel_size=stride, stride=stride) if stride > 1 else None
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ffn_dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers > 0 else None
        self.norm = nn.LayerNorm(d_model)
        self.output_proj = nn.Linear(d_model, lm_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        h = self.input_proj(x.transpose(1, 2))
        if self.down is not None:
            h = self.down(h.transpose(1, 2)).transpose(1, 2)
            lengths = torch.div(lengths, self.stride, rounding_mode="floor").clamp(min=1)
        pad = torch.arange(h.shape[1], device=h.device).unsqueeze(0) >= lengths.to(h.device).unsqueeze(1)
        if self.encoder is not None:
            h = self.encoder(h, src_key_padding_mask=pad)
        return self.output_proj(self.norm(h)), lengths
