"""ONNX export of the XY-Tokenizer codec: ``encoder.onnx`` (wav -> codes) and ``decoder.onnx``.

    encoder.onnx  input  wav   float32 [1, N], 16 kHz, 1280 <= N <= 480000 (one 30-s window)
                  output codes int64   [nq, floor(N / 1280)]
    decoder.onnx  input  codes int64   [nq, T], 1 <= T <= 375 (one 30-s window)
                  output wav   float32 [1, U T] at the output rate (U = decoder_upsample_rate:
                               1280 at 16 kHz, 1920 at 24 kHz, 2560 at 32 kHz)

One graph call is one window of ``XYTokenizer.encode`` / ``decode`` in mode="fast" (the official
single-item computation, trimmed to the frames the window needs). Longer audio is windowed by the
caller exactly as ``encode``/``decode`` do; ``xytok.onnx_runtime.OnnxCodec`` does that for
onnxruntime.

The wrappers reuse the model's modules and weights; only three pieces are re-formulated for the
exporter (the PyTorch model itself is untouched):

* the log-mel STFT is a strided conv1d with a windowed DFT basis (no complex tensors in the graph);
  the mel filters, clamp/log10, per-item max floor and scaling are the front end's;
* the Vocos inverse STFT is one conv_transpose1d whose kernel is the windowed inverse real DFT
  (irfft + overlap-add in one op: ONNX has no inverse STFT), divided by the window envelope;
* shape-dependent branches (the x4 down-sampling's time padding, the quantizer's length masks and
  the decode-time code-range check) are written branch-free for dynamic lengths.

These differ from the PyTorch kernels by float32 rounding only; ``xytok.bin.onnx_parity``
measures the effect (identical codes, waveform SNR) over clip lengths.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from xytok.frontend import BOUNDARY_FRAMES, HOP_LENGTH, N_FFT, N_SAMPLES_30S, mel_filters
from xytok.nn.rvq import _nearest

logger = logging.getLogger(__name__)

OPSET = 18
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "onnx_meta.json"


class LogMelDFT(nn.Module):
    """wav (1, N) -> official log-mel (1, 80, min(ceil(N/160) + 2, 3000)), as ``log_mel(pad_to_30s=False)``."""

    def __init__(self):
        super().__init__()
        n = torch.arange(N_FFT, dtype=torch.float64)
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / N_FFT  # (201, 400)
        # Real and imaginary parts of the windowed DFT as conv kernels (sign of Im is irrelevant:
        # only the power is used).
        basis = torch.cat([torch.cos(angle), torch.sin(angle)], 0) * window[None, :]
        self.register_buffer("dft", basis[:, None, :].float(), persistent=False)  # (402, 1, 400)
        self.register_buffer("filters", torch.from_numpy(mel_filters().T.astype(np.float32)), persistent=False)
        self.n_bins = N_FFT // 2 + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        n = wav.shape[1]
        # Buffer of ceil(N/160) + 2 frames (capped at 30 s) zero-padded past the signal: padding by
        # a fixed amount then slicing keeps the graph free of shape-dependent padding.
        buf_len = ((n + HOP_LENGTH - 1) // HOP_LENGTH + BOUNDARY_FRAMES) * HOP_LENGTH
        buf = F.pad(wav, (0, (BOUNDARY_FRAMES + 1) * HOP_LENGTH))[:, :buf_len][:, :N_SAMPLES_30S]
        # centred STFT with reflect padding, as torch.stft(center=True, pad_mode="reflect")
        framed = F.pad(buf[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
        spec = F.conv1d(framed, self.dft, stride=HOP_LENGTH)[:, :, :-1]  # drop the last frame (official)
        re, im = spec[:, : self.n_bins], spec[:, self.n_bins:]
        power = re * re + im * im
        mel = torch.clamp(self.filters @ power, min=1e-10).log10()
        max_val = mel.amax(dim=(1, 2), keepdim=True)
        mel = torch.maximum(mel, max_val - 8.0)
        return (mel + 4.0) / 4.0


class ISTFTConv(nn.Module):
    """Vocos ``ISTFT`` (padding "same") from real/imaginary parts, as one conv_transpose1d."""

    def __init__(self, window: torch.Tensor, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop_length
        self.pad = (n_fft - hop_length) // 2
        n_bins = n_fft // 2 + 1
        w = window.detach().to(torch.float64).cpu()
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_bins, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        # irfft (norm="backward"): x[n] = 1/N sum_k c_k (Re X_k cos - Im X_k sin), c_k = 2 except
        # at DC and Nyquist (where irfft also ignores Im, which sin() = 0 gives exactly).
        scale = torch.full((n_bins,), 2.0 / n_fft, dtype=torch.float64)
        scale[0] = scale[-1] = 1.0 / n_fft
        cos_b = torch.cos(angle) * scale[:, None]
        sin_b = -torch.sin(angle) * scale[:, None]
        sin_b[0] = 0.0
        sin_b[-1] = 0.0
        kernel = torch.cat([cos_b, sin_b], 0) * w[None, :]  # windowed, (2 * n_bins, n_fft)
        self.register_buffer("kernel", kernel[:, None, :].float(), persistent=False)
        self.register_buffer("win_sq", w.square()[None, None, :].float(), persistent=False)

    def forward(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """re, im (1, n_fft//2+1, T) -> (1, T * hop)."""
        y = F.conv_transpose1d(torch.cat([re, im], 1), self.kernel, stride=self.hop)
        ones = torch.ones_like(re[:, :1, :])
        envelope = F.conv_transpose1d(ones, self.win_sq, stride=self.hop)
        y = y[:, 0, self.pad: -self.pad] / envelope[:, 0, self.pad: -self.pad]
        return y


class OnnxEncoder(nn.Module):
    """wav (1, N) -> codes (nq, floor(N/1280)): one window of ``XYTokenizer.encode``."""

    def __init__(self, codec):
        super().__init__()
        self.codec = codec
        self.mel = LogMelDFT()

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        c = self.codec
        n = wav.shape[1]
        mel = self.mel(wav)
        mel_len = torch.full((1,), (n + HOP_LENGTH - 1) // HOP_LENGTH, dtype=torch.long)
        mel_len = torch.clamp(mel_len, max=N_SAMPLES_30S // HOP_LENGTH)
        sem, enc_len = c.semantic_encoder(mel, mel_len)
        sem, _ = c.semantic_encoder_adapter(sem, enc_len)
        acoustic, _ = c.acoustic_encoder(mel, mel_len)
        pre, _ = c.pre_rvq_adapter(torch.cat([sem, acoustic], dim=1), enc_len)
        down = self._downsample(pre)
        codes = self._quantize(down)  # (nq, T)
        return codes[:, : n // c.code_hop]

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        """``ResidualDownConv.forward`` with its time padding written without a branch."""
        ds = self.codec.downsample
        t = x.shape[2]
        t_out = (t + ds.factor - 1) // ds.factor
        x = F.pad(x, (0, ds.factor - 1))[:, :, : t_out * ds.factor]
        b, d = x.shape[0], x.shape[1]
        regrouped = x.transpose(1, 2).reshape(b, t_out, d * ds.factor)
        g = ds.gate_proj(x).transpose(1, 2)
        u = ds.up_proj(x).transpose(1, 2)
        y = ds.layer_norm(ds.down_proj(F.silu(g) * u) + regrouped)
        return y.transpose(1, 2)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Inference ``ResidualVQ`` codes of (1, D, T). Length masks are dropped: every frame is
        quantized on its own, so the kept (valid) frames do not depend on them."""
        q = self.codec.quantizer
        residual = q.input_proj(x).float()
        codes = []
        for vq in q.quantizers:
            z_e = vq.in_project(residual).float()
            flat = z_e.permute(0, 2, 1).reshape(-1, z_e.shape[1])
            idx = _nearest(flat, vq.codebook)
            residual = residual - vq.out_project(F.embedding(idx, vq.codebook).t()[None].float()).float()
            codes.append(idx)
        return torch.stack(codes)


class OnnxDecoder(nn.Module):
    """codes (nq, T) -> wav (1, U T) at the output rate: one window of ``XYTokenizer.decode`` (mode="fast")."""

    def __init__(self, codec):
        super().__init__()
        self.codec = codec
        head = codec.vocos.head
        self.istft = ISTFTConv(head.istft.window, head.istft.n_fft, head.istft.hop_length)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        c = self.codec
        q = c.quantizer
        t = codes.shape[1]
        emb = None
        for vq, layer_codes in zip(q.quantizers, codes):
            e = vq.out_project(F.embedding(layer_codes, vq.codebook).t()[None].float())
            emb = e if emb is None else emb + e
        zq = q.output_proj(emb)
        lengths = torch.full((1,), t, dtype=torch.long)
        post, _ = c.post_rvq_adapter(zq, lengths)
        up, up_len = c.upsample(post, lengths)
        feats, _ = c.acoustic_decoder(up, up_len)
        h = c.vocos.head.out(c.vocos.backbone(feats)).transpose(1, 2)
        log_mag, phase = h.chunk(2, dim=1)
        mag = torch.clip(torch.exp(log_mag), max=1e2)
        return self.istft(mag * torch.cos(phase), mag * torch.sin(phase))


def _meta(codec, overlap_seconds: float) -> dict:
    from xytok import __version__

    return {
        "format": "xytok-onnx",
        "xytok_version": __version__,
        "opset": OPSET,
        "sample_rate": codec.input_sample_rate,  # the encoder's input rate
        "hop_samples": codec.code_hop,
        "output_sample_rate": codec.sample_rate,  # the decoder's (16 kHz as released, 24/32 kHz decoders)
        "output_hop_samples": codec.decoder_upsample_rate,
        "frame_rate_hz": codec.frame_rate,
        "num_quantizers": codec.num_quantizers,
        "codebook_size": codec.codebook_size,
        "window_samples": codec.window_samples,
        "window_codes": codec.window_codes,
        "overlap_seconds": overlap_seconds,
        "encoder": {"file": ENCODER_FILE, "input": "wav", "input_shape": [1, "N"], "input_dtype": "float32",
                    "output": "codes", "output_shape": [codec.num_quantizers, "floor(N/1280)"],
                    "output_dtype": "int64", "min_samples": codec.code_hop, "max_samples": codec.window_samples},
        "decoder": {"file": DECODER_FILE, "input": "codes", "input_shape": [codec.num_quantizers, "T"],
                    "input_dtype": "int64", "output": "wav",
                    "output_shape": [1, f"{codec.decoder_upsample_rate}*T"], "output_sample_rate": codec.sample_rate,
                    "output_dtype": "float32", "min_codes": 1, "max_codes": codec.window_codes},
    }


def _export(module, example, dynamic_shapes, input_name, output_name, path):
    # The dynamo exporter (torch.export + onnxscript) is torch's default and handles these
    # graphs; optimize=True folds the weight-norm / basis constants. Its passes log every
    # rewrite at INFO and torch warns about unrelated torchvision ops: keep that out of the
    # user's log unless they asked for DEBUG.
    quiet = not logger.isEnabledFor(logging.DEBUG)
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        if quiet and logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    if quiet:  # "torchvision is not installed. Skipping torchvision::nms" etc.
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[input_name], output_names=[output_name],
                                    dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    # torch decides: one file for small models; for large ones (the released size) the weights go
    # to <name>.onnx.data beside the graph (protobuf's 2 GB limit), which onnxruntime finds itself.
    program.save(path)


def export_onnx(codec, out_dir, overlap_seconds: float = 10.0) -> dict:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``onnx_meta.json`` for ``codec`` into ``out_dir``.

    ``overlap_seconds`` is only recorded in the metadata (the default windowing of long audio).
    Returns the metadata dict (with the export times added).
    """
    from torch.export import Dim

    if not 0 <= overlap_seconds < codec.window_samples / codec.input_sample_rate:
        raise ValueError(f"overlap_seconds must be in [0, 30), got {overlap_seconds}")
    codec = codec.cpu().eval()
    os.makedirs(out_dir, exist_ok=True)
    meta = _meta(codec, overlap_seconds)
    times = {}

    t0 = time.perf_counter()
    n_dim = Dim("N", min=codec.code_hop, max=codec.window_samples)
    example = torch.randn(1, 5 * codec.input_sample_rate) * 0.1
    _export(OnnxEncoder(codec).eval(), example, {"wav": {1: n_dim}}, "wav", "codes",
            os.path.join(out_dir, ENCODER_FILE))
    times["encoder_export_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    t_dim = Dim("T", min=1, max=codec.window_codes)
    codes = torch.randint(0, codec.codebook_size, (codec.num_quantizers, 40))
    _export(OnnxDecoder(codec).eval(), codes, {"codes": {1: t_dim}}, "codes", "wav",
            os.path.join(out_dir, DECODER_FILE))
    times["decoder_export_s"] = round(time.perf_counter() - t0, 2)

    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    meta.update(times)
    return meta


# ---------------------------------------------------------------------------------------------
# Parity of an export against the PyTorch model
# ---------------------------------------------------------------------------------------------
PARITY_SECONDS = (1.0, 3.0, 10.0, 30.0, 60.0)


def speech_like(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Deterministic speech-like test signal: gliding harmonic voice with syllable-rate envelope,
    noise bursts (fricatives) and short pauses; float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 110 + 40 * rng.random() + 25 * np.sin(2 * np.pi * (0.3 + 0.4 * rng.random()) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase + rng.random() * 6.28) / k for k in range(1, 12))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * (3 + rng.random()) * t)) ** 2
    pauses = (np.sin(2 * np.pi * 0.37 * t + rng.random() * 6.28) > -0.8).astype(np.float64)
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.3 * t) > 0.6)
    wav = (0.08 * voiced * syllables + 0.02 * noise) * pauses + 0.002 * rng.standard_normal(n)
    return np.clip(wav, -1, 1).astype(np.float32)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - test|^2); inf when equal."""
    ref = np.asarray(ref, dtype=np.float64)
    err = float(np.sum((ref - np.asarray(test, dtype=np.float64)) ** 2))
    return math.inf if err == 0 else 10 * math.log10(max(float(np.sum(ref ** 2)), 1e-30) / err)


def parity(codec, onnx_codec, clips, overlap_seconds: float | None = None) -> list:
    """PyTorch ``codec`` vs ``OnnxCodec`` on [(name, 1-D float32 wav)]: one dict per clip with
    ``seconds``, ``codes_identical`` (fraction of equal codes), ``frames``, ``snr_db`` (ONNX decoder
    vs PyTorch decoder on the PyTorch codes) and wall times of both runtimes."""
    overlap = onnx_codec.meta.get("overlap_seconds", 10.0) if overlap_seconds is None else overlap_seconds
    rows = []
    for name, wav in clips:
        wav = np.asarray(wav, dtype=np.float32)
        t0 = time.perf_counter()
        ref_codes = codec.encode([torch.from_numpy(wav)], overlap_seconds=overlap)[0]
        t1 = time.perf_counter()
        ref_wav = codec.decode([ref_codes], overlap_seconds=overlap)[0].numpy()
        t2 = time.perf_counter()
        codes = onnx_codec.encode(wav)
        t3 = time.perf_counter()
        out_wav = onnx_codec.decode(ref_codes.numpy())
        t4 = time.perf_counter()
        ref_codes = ref_codes.numpy()
        same = float(np.mean(codes == ref_codes)) if codes.shape == ref_codes.shape else 0.0
        rows.append({"clip": name, "seconds": round(wav.size / codec.input_sample_rate, 3),
                     "frames": int(ref_codes.shape[1]), "codes_identical": same,
                     "snr_db": snr_db(ref_wav, out_wav) if out_wav.shape == ref_wav.shape else -math.inf,
                     "torch_encode_s": t1 - t0, "torch_decode_s": t2 - t1,
                     "onnx_encode_s": t3 - t2, "onnx_decode_s": t4 - t3})
    return rows


def format_parity(rows) -> str:
    lines = [f"{'clip':<24} {'seconds':>8} {'frames':>7} {'codes same':>11} {'SNR dB':>8} "
             f"{'enc RTF pt/ort':>16} {'dec RTF pt/ort':>16}"]
    for r in rows:
        s = max(r["seconds"], 1e-9)
        lines.append(f"{r['clip']:<24} {r['seconds']:>8.2f} {r['frames']:>7d} {r['codes_identical']:>11.4f} "
                     f"{r['snr_db']:>8.1f} {r['torch_encode_s'] / s:>7.3f}/{r['onnx_encode_s'] / s:<8.3f} "
                     f"{r['torch_decode_s'] / s:>7.3f}/{r['onnx_decode_s'] / s:<8.3f}")
    return "\n".join(lines)
