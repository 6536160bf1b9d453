"""Masked pre-LayerNorm Transformer blocks shared by the encoders, the adapters and the decoder.

Behaviour (golden README section 6): pre-LN (eps 1e-5), exact-erf GELU, multi-head attention with
a bias-free k projection, the query scaled by head_dim^-0.5 after its projection, additive
masking with float32's most negative finite value wherever query OR key is padded (padded query
rows get uniform attention and are zeroed afterwards), no causal mask.

Streaming option (default off, so released models are untouched): ``causal=True`` with
``chunk_frames=C`` makes attention chunk-causal: a frame of chunk c = t // C attends to every frame
of chunks <= c. ``lookahead_frames=K`` lets the FIRST layer also see the K frames after its chunk;
later layers stay strictly chunk-causal, so the look-ahead does not compound with depth: the output
of chunk c depends on inputs up to (c + 1) C + K - 1 and on nothing later (xytok.streaming).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """(length, channels) float32 table: all sines first, then all cosines (Whisper layout).

    Computed in float32 like the released buffers (a float64 table differs by up to 8.5e-5), but
    checkpoints carry the table, so loading always restores the released values.
    """
    if channels % 2:
        raise ValueError(f"sinusoid table needs an even channel count, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled_time = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid steps."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def attention_bias(valid: torch.Tensor, dtype=torch.float32, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) valid mask -> (B, 1, T, T) additive bias: 0 where query and key are valid, else min.

    ``allowed`` (T, T) bool [query, key], e.g. ``chunk_causal_allowed``, masks further pairs."""
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    if allowed is not None:
        pair = pair & allowed
    bias = torch.zeros(pair.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~pair, torch.finfo(dtype).min)


def chunk_causal_allowed(length: int, chunk_frames: int, lookahead_frames: int = 0,
                         device=None) -> torch.Tensor:
    """(T, T) bool [query, key]: key j is visible to query i iff j < (i // C + 1) * C + K."""
    steps = torch.arange(length, device=device)
    limit = (steps // chunk_frames + 1) * chunk_frames + lookahead_frames
    return steps[None, :] < limit[:, None]


def check_causal_options(owner: str, causal: bool, chunk_frames: int, lookahead_frames: int) -> None:
    if not isinstance(causal, bool):
        raise ValueError(f"{owner}: causal must be true or false, got {causal!r}")
    if not causal:
        if chunk_frames or lookahead_frames:
            raise ValueError(f"{owner}: chunk_frames / lookahead_frames need causal: true")
        return
    for name, value, low in (("chunk_frames", chunk_frames, 1), ("lookahead_frames", lookahead_frames, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{owner}: {name} must be an integer >= {low} with causal: true, got {value!r}")


class MultiHeadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"d_model {embed_dim} is not divisible by {num_heads} heads")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        # Registration order = released key order (k, v, q, out).
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self._heads(self.q_proj(x) * self.scaling)
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        # The query is already scaled (official order), so SDPA runs with scale 1. Its fused
        # kernel is ~3x faster on CPU than softmax(QK^T + bias) V and agrees to ~1e-6.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        out = out.transpose(1, 2).reshape(b, t, self.embed_dim)
        return self.out_proj(out)


class TransformerLayer(nn.Module):
    """h = h + Attn(LN1(h)); h = h + fc2(GELU(fc1(LN2(h))))."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        h = h + self.self_attn(self.self_attn_layer_norm(h), bias)
        return h + self.fc2(F.gelu(self.fc1(self.final_layer_norm(h))))


class TransformerStack(nn.Module):
    """Positional table + layers + final LayerNorm + zeroing of padded steps, on (B, T, D).

    Subclasses create their own front modules first, then call ``build_stack`` so that the
    state-dict order follows the released one (e.g. proj / conv1 / conv2 before layers).
    """

    def build_stack(self, d_model: int, num_layers: int, num_heads: int, ffn_dim: int, max_positions: int,
                    causal: bool = False, chunk_frames: int = 0, lookahead_frames: int = 0):
        check_causal_options(type(self).__name__, causal, chunk_frames, lookahead_frames)
        self.d_model, self.max_positions = d_model, max_positions
        self.causal, self.chunk_frames, self.lookahead_frames = causal, chunk_frames, lookahead_frames
        self.register_buffer("positional_embedding", sinusoids(max_positions, d_model))
        self.layers = nn.ModuleList(TransformerLayer(d_model, num_heads, ffn_dim) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(d_model)

    def run_layers(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """h (B, T, D) already embedded -> (B, T, D) with padded steps exactly zero."""
        t = h.shape[1]
        if t > self.max_positions:
            raise ValueError(f"{type(self).__name__}: {t} steps exceed the {self.max_positions}-row "
                             "positional table (inputs must be chunked to <= 30 s)")
        h = h + self.positional_embedding[:t].to(h.dtype)
        valid = length_mask(lengths.to(h.device), t)
        if not self.causal:
            biases = [attention_bias(valid, h.dtype)] * len(self.layers)
        else:  # look-ahead in the first layer only (see the module docstring)
            strict = attention_bias(valid, h.dtype, chunk_causal_allowed(t, self.chunk_frames, 0, h.device))
            first = attention_bias(valid, h.dtype, chunk_causal_allowed(
                t, self.chunk_frames, self.lookahead_frames, h.device)) if self.lookahead_frames else strict
            biases = [first] + [strict] * (len(self.layers) - 1)
        for layer, bias in zip(self.layers, biases):
            h = layer(h, bias)
        h = self.layer_norm(h)
        return h * valid[:, :, None].to(h.dtype)


class Transformer(TransformerStack):
    """The adapter Transformer: optional input Linear (proj), the stack, optional output Linear.

    forward(x (B, input_dim, T), lengths (B,)) -> (y (B, output_dim, T), lengths). Padded steps of
    y are zero, or equal the out_proj bias where out_proj exists (as released).
    ``causal`` / ``chunk_frames`` / ``lookahead_frames``: the streaming option (module docstring).
    """

    def __init__(self, input_dim: int, output_dim: int, d_model: int, max_source_positions: int = 1500,
                 encoder_layers: int = 4, encoder_attention_heads: int = 12, encoder_ffn_dim: int = 3072,
                 causal: bool = False, chunk_frames: int = 0, lookahead_frames: int = 0):
        super().__init__()
        # proj/out_proj exist only when the width changes (released key set).
        self.proj = nn.Linear(input_dim, d_model) if input_dim != d_model else None
        self.build_stack(d_model, encoder_layers, encoder_attention_heads, encoder_ffn_dim,
                         max_source_positions, causal, chunk_frames, lookahead_frames)
        self.out_proj = nn.Linear(d_model, output_dim) if output_dim != d_model else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        h = x.transpose(1, 2)
        if self.proj is not None:
            h = self.proj(h)
        h = self.run_layers(h, lengths)
        if self.out_proj is not None:
            h = self.out_proj(h)
        return h.transpose(1, 2), lengths
