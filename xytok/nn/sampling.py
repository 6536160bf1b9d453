"""Time-resolution changes around the quantizer: 50 Hz -> 12.5 Hz (ResidualDownConv) and back (UpConv)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualDownConv(nn.Module):
    """x4 down-sampling: LN_4D(W_down (SiLU(g) * u) + regroup(x)), g/u = Conv1d(D, 4D, k4, s4).

    regroup stacks the D channels of 4 consecutive steps into one 4D vector (step 4j first).
    """

    def __init__(self, d_model: int = 768, avg_pooler: int = 4):
        super().__init__()
        self.d_model, self.factor = d_model, avg_pooler
        out = d_model * avg_pooler
        self.gate_proj = nn.Conv1d(d_model, out, avg_pooler, stride=avg_pooler, bias=False)
        self.up_proj = nn.Conv1d(d_model, out, avg_pooler, stride=avg_pooler, bias=False)
        self.down_proj = nn.Linear(out, out, bias=False)
        self.layer_norm = nn.LayerNorm(out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x (B, D, T) -> (B, 4D, ceil(T/4)), lengths // 4.

        A T that is not a multiple of 4 is zero-padded in time. (The released code pads the
        channel axis there, a latent bug that never runs: it always sees T = 1500. Padded steps
        are zero on this path anyway, so time padding reproduces the official values.)
        """
        rem = x.shape[2] % self.factor
        if rem:
            x = F.pad(x, (0, self.factor - rem))
        b, d, t = x.shape
        regrouped = x.transpose(1, 2).reshape(b, t // self.factor, d * self.factor)
        g = self.gate_proj(x).transpose(1, 2)
        u = self.up_proj(x).transpose(1, 2)
        y = self.layer_norm(self.down_proj(F.silu(g) * u) + regrouped)
        return y.transpose(1, 2), lengths // self.factor


class UpConv(nn.Module):
    """x4 up-sampling by a bias-free ConvTranspose1d(4D, D, k=stride, stride) (no window overlap)."""

    def __init__(self, d_model: int = 768, stride: int = 4):
        super().__init__()
        self.stride = stride
        self.up_conv = nn.ConvTranspose1d(d_model * stride, d_model, stride, stride=stride, bias=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x (B, 4D, T) -> (B, D, 4T), lengths * 4."""
        return self.up_conv(x), lengths * self.stride
