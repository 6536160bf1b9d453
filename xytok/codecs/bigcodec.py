"""BigCodec (Xin et al. 2024) from its released checkpoint: 16 kHz, 80 Hz (hop 200), one
factorised VQ codebook of 8192 (13 bit/frame, 1.04 kbps).

No usable package serves it here: the PyPI ``bigcodec`` is an unofficial repackaging that imports
torchaudio at module level (a torchaudio matching the installed torch may not exist) and loads its
own hub format. So this module builds the network itself, with the released checkpoint's module
names, and loads ``bigcodec.pt`` (``{"CodecEnc": encoder state, "generator": decoder state}``,
old-style weight-norm ``weight_g``/``weight_v`` keys, fixed anti-aliasing filters stored as
buffers). The anti-aliased SnakeBeta activation is transformers' X-Codec 2.0 one (X-Codec 2.0's
acoustic encoder is BigCodec's), so this family needs transformers with Xcodec2.

Weights: a directory holding ``bigcodec.pt`` (and optionally ``config.json`` overriding the
architecture keys in ``RELEASED``; the released model has none), a ``.pt`` file, or a hub id
(``Alethia/BigCodec``) fetched with huggingface_hub. Input is zero-padded as the released
inference does (by hop - N % hop samples: ceil((N + 1) / 200) frames), and every frame is kept.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from xytok.codecs.base import Codec, CodecSpecError

CHECKPOINT_NAME = "bigcodec.pt"
# the released architecture (BigCodec's CodecEncoder / CodecDecoder defaults)
RELEASED = {"ngf": 48, "up_ratios": [2, 2, 2, 5, 5], "dilations": [1, 3, 9], "rnn_num_layers": 2,
            "out_channels": 1024, "upsample_initial_channel": 1536, "codebook_size": 8192, "codebook_dim": 8,
            "num_quantizers": 1, "sample_rate": 16000}
# the released checkpoint stores these constant filters; ours are recomputed (and compared)
_FILTER_SUFFIXES = (".upsample.filter", ".downsample.lowpass.filter")


def _snake(channels: int) -> nn.Module:
    """Anti-aliased SnakeBeta (log-scale alpha/beta): x2 upsample, snake, low-pass x2 downsample."""
    try:
        from transformers.models.xcodec2.modeling_xcodec2 import (Xcodec2AntiAliasedActivation1d,
                                                                  Xcodec2SnakeBeta)
    except ImportError as e:
        raise CodecSpecError(f"the bigcodec codec uses transformers' Xcodec2 activations; upgrade transformers: {e}")
    return Xcodec2AntiAliasedActivation1d(activation=Xcodec2SnakeBeta(channels))


def _conv(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv1d(*args, **kwargs))


class _ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(_snake(dim), _conv(dim, dim, 7, dilation=dilation, padding=3 * dilation),
                                   _snake(dim), _conv(dim, dim, 1))

    def forward(self, x):
        return x + self.block(x)


class _EncoderBlock(nn.Module):
    """Residual units at dim/2 channels, then a strided conv to dim channels (time / stride)."""

    def __init__(self, dim: int, stride: int, dilations):
        super().__init__()
        self.block = nn.Sequential(*[_ResidualUnit(dim // 2, d) for d in dilations], _snake(dim // 2),
                                   _conv(dim // 2, dim, 2 * stride, stride=stride, padding=(stride + 1) // 2))

    def forward(self, x):
        return self.block(x)


class _DecoderBlock(nn.Module):
    """A transposed conv (time x stride, channels in -> out), then residual units."""

    def __init__(self, dim_in: int, dim_out: int, stride: int, dilations):
        super().__init__()
        up = weight_norm(nn.ConvTranspose1d(dim_in, dim_out, 2 * stride, stride=stride, padding=(stride + 1) // 2,
                                            output_padding=stride % 2))
        self.block = nn.Sequential(_snake(dim_in), up, *[_ResidualUnit(dim_out, d) for d in dilations])

    def forward(self, x):
        return self.block(x)


class _ResidualLSTM(nn.Module):
    """Unidirectional LSTM over time with a skip connection, on (B, C, T)."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers, batch_first=True)

    def forward(self, x):
        x = x.transpose(1, 2)
        return (self.lstm(x)[0] + x).transpose(1, 2)


class _FactorizedVQ(nn.Module):
    """Project to a low-dim space, nearest codeword by cosine (L2-normalised search), project back."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_proj = weight_norm(nn.Linear(dim, codebook_dim))
        self.out_proj = weight_norm(nn.Linear(codebook_dim, dim))
        self._codebook = nn.Embedding(codebook_size, codebook_dim)

    def encode(self, z):  # (B, D, T) -> (B, T)
        e = nn.functional.normalize(self.in_proj(z.transpose(1, 2)), dim=-1)
        return (e @ nn.functional.normalize(self._codebook.weight, dim=-1).t()).argmax(-1)

    def embed(self, codes):  # (B, T) -> (B, T, D): the raw codeword, projected back
        return self.out_proj(self._codebook(codes))


class _ResidualVQ(nn.Module):
    def __init__(self, num_quantizers: int, **kw):
        super().__init__()
        self.layers = nn.ModuleList([_FactorizedVQ(**kw) for _ in range(num_quantizers)])

    def encode(self, z):  # (B, D, T) -> (nq, B, T)
        codes = []
        for layer in self.layers:
            c = layer.encode(z)
            z = z - layer.embed(c).transpose(1, 2)
            codes.append(c)
        return torch.stack(codes)

    def embed(self, codes):  # (n, B, T) -> (B, T, D), sum over the given layers
        return sum(layer.embed(c) for layer, c in zip(self.layers, codes))


class BigCodecEncoder(nn.Module):
    """Checkpoint key 'CodecEnc': conv, strided blocks doubling the channels, LSTM, snake, conv."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim = cfg["ngf"]
        layers = [_conv(1, dim, 7, padding=3)]
        for stride in cfg["up_ratios"]:
            dim *= 2
            layers.append(_EncoderBlock(dim, stride, cfg["dilations"]))
        layers += [_ResidualLSTM(dim, cfg["rnn_num_layers"]), _snake(dim), _conv(dim, cfg["out_channels"], 3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, wav):  # (B, 1, N) -> (B, out_channels, N / hop)
        return self.block(wav)


class BigCodecDecoder(nn.Module):
    """Checkpoint key 'generator': the quantizer, then conv, LSTM, upsampling blocks halving the
    channels (the encoder's strides reversed), snake, conv to one channel, tanh."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.quantizer = _ResidualVQ(cfg["num_quantizers"], dim=cfg["out_channels"],
                                     codebook_size=cfg["codebook_size"], codebook_dim=cfg["codebook_dim"])
        ch = cfg["upsample_initial_channel"]
        layers = [_conv(cfg["out_channels"], ch, 7, padding=3), _ResidualLSTM(ch, cfg["rnn_num_layers"])]
        for i, stride in enumerate(reversed(cfg["up_ratios"])):
            layers.append(_DecoderBlock(ch // 2 ** i, ch // 2 ** (i + 1), stride, cfg["dilations"]))
        out = ch // 2 ** len(cfg["up_ratios"])
        layers += [_snake(out), _conv(out, 1, 7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, emb):  # (B, out_channels, T) -> (B, 1, T * hop)
        return self.model(emb)


def load_state(module: nn.Module, state: dict, what: str):
    """Load a released state dict: check its constant filters equal ours, then load the rest strictly."""
    state = dict(state)
    ours = dict(module.named_buffers())  # the filters are non-persistent buffers here
    for key in [k for k in state if k.endswith(_FILTER_SUFFIXES)]:
        f = state.pop(key)
        mine = ours.get(key.replace(".downsample.lowpass.filter", ".downsample.filter"))
        if mine is None or mine.shape != f.shape or not torch.allclose(mine, f.float(), atol=1e-6):
            raise CodecSpecError(f"{what}: anti-aliasing filter {key} differs from BigCodec's (not a BigCodec checkpoint?)")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CodecSpecError(f"{what}: does not match the BigCodec architecture: {str(e)[:600]}")


def _resolve(name_or_dir: str, revision=None):
    """(checkpoint path, architecture dict) for a dir, a .pt file or a hub id."""
    cfg = dict(RELEASED)
    if os.path.isdir(name_or_dir):
        ckpt = os.path.join(name_or_dir, CHECKPOINT_NAME)
        if not os.path.isfile(ckpt):
            raise CodecSpecError(f"{name_or_dir}: no {CHECKPOINT_NAME} (BigCodec's released checkpoint)")
        cfg_path = os.path.join(name_or_dir, "config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                extra = json.load(f)
            unknown = sorted(set(extra) - set(RELEASED))
            if unknown:
                raise CodecSpecError(f"{cfg_path}: unknown keys {unknown} (known: {sorted(RELEASED)})")
            cfg.update(extra)
        return ckpt, cfg
    if os.path.isfile(name_or_dir):
        return name_or_dir, cfg
    if name_or_dir.count("/") != 1:
        raise CodecSpecError(f"{name_or_dir!r} is neither a directory, a .pt file nor a hub id org/name")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise CodecSpecError(f"downloading {name_or_dir} needs huggingface_hub (pip install 'xytok[hub]'): {e}")
    try:
        return hf_hub_download(name_or_dir, CHECKPOINT_NAME, revision=revision), cfg
    except Exception as e:  # not found, offline and not cached, ...
        raise CodecSpecError(f"cannot fetch {CHECKPOINT_NAME} from {name_or_dir} (offline? give a local dir "
                             f"holding it instead): {type(e).__name__}: {e}")


class BigCodecCodec(Codec):
    family = "bigcodec"

    def __init__(self, name_or_dir: str, device="cpu", revision=None, num_quantizers=None):
        self.name = name_or_dir
        self.device = torch.device(device)
        ckpt_path, cfg = _resolve(name_or_dir, revision)
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CodecSpecError(f"cannot read {ckpt_path}: {e}")
        if not isinstance(ckpt, dict) or not {"CodecEnc", "generator"} <= set(ckpt):
            raise CodecSpecError(f"{ckpt_path}: expected BigCodec's {{'CodecEnc': ..., 'generator': ...}}, found "
                                 f"{sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__}")
        self.encoder, self.decoder = BigCodecEncoder(cfg), BigCodecDecoder(cfg)
        load_state(self.encoder, ckpt["CodecEnc"], f"{ckpt_path} CodecEnc")
        load_state(self.decoder, ckpt["generator"], f"{ckpt_path} generator")
        self.encoder.to(self.device).eval()
        self.decoder.to(self.device).eval()
        self.config = cfg
        self.sample_rate = int(cfg["sample_rate"])
        self._hop = 1
        for r in cfg["up_ratios"]:
            self._hop *= int(r)
        self.frame_rate = self.sample_rate / self._hop
        self.max_quantizers = int(cfg["num_quantizers"])
        self.num_quantizers = self._check_num_quantizers(num_quantizers)
        self.codebook_sizes = [int(cfg["codebook_size"])] * self.num_quantizers

    @property
    def hop_length(self) -> int:
        return self._hop

    def _encode_one(self, wav):
        wav = nn.functional.pad(wav, (0, self._hop - wav.numel() % self._hop))  # as the released inference
        codes = self.decoder.quantizer.encode(self.encoder(wav.view(1, 1, -1)))  # (nq, 1, T)
        return codes[: self.num_quantizers, 0]

    def _decode_one(self, codes):
        emb = self.decoder.quantizer.embed(codes.unsqueeze(1))  # (1, T, D)
        return self.decoder(emb.transpose(1, 2)).reshape(-1)

    def _embed_one(self, wav):
        return self.decoder.quantizer.embed(self._encode_one(wav).unsqueeze(1))[0]
