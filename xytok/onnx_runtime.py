"""Run an exported codec (``xytok export-onnx``) with onnxruntime, windowed like ``XYTokenizer``.

    from xytok.onnx_runtime import OnnxCodec
    codec = OnnxCodec("exp/onnx")          # encoder.onnx, decoder.onnx, onnx_meta.json
    codes = codec.encode(wav)              # float32 (N,) at 16 kHz -> int64 (nq, N // 1280)
    wav = codec.decode(codes)              # (nq, T) -> float32 (output_hop T,) at codec.output_sample_rate
                                           # (1280 T at 16 kHz; 1920 T for a 24 kHz decoder)

Each graph call covers at most one 30-s window. Longer inputs are cut as ``XYTokenizer.encode`` /
``decode`` cut them: window k starts at k * stride (stride = 30 s - overlap, 20 s by default),
its first stride / 1280 codes (or samples) are kept and the rest is look-ahead context only, so the
results match the PyTorch ones window for window. Needs numpy and onnxruntime only (no torch).
"""

from __future__ import annotations

import json
import os

import numpy as np

META_FILE = "onnx_meta.json"


class OnnxCodec:
    def __init__(self, onnx_dir, providers=None, num_threads: int | None = None,
                 overlap_seconds: float | None = None):
        import onnxruntime as ort

        meta_path = os.path.join(onnx_dir, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: not a directory written by 'xytok export-onnx'")
        with open(meta_path) as f:
            self.meta = meta = json.load(f)
        self.sample_rate = int(meta["sample_rate"])  # encoder input (16 kHz)
        self.hop = int(meta["hop_samples"])
        # decoder output: 24/32 kHz decoders; exports without these keys are 16 kHz in and out
        self.output_sample_rate = int(meta.get("output_sample_rate", self.sample_rate))
        self.output_hop = int(meta.get("output_hop_samples", self.hop))
        self.num_quantizers = int(meta["num_quantizers"])
        self.codebook_size = int(meta["codebook_size"])
        self.window_samples = int(meta["window_samples"])
        self.window_codes = int(meta["window_codes"])
        overlap = meta.get("overlap_seconds", 10.0) if overlap_seconds is None else overlap_seconds
        if not 0 <= overlap < self.window_samples / self.sample_rate:
            raise ValueError(f"overlap_seconds must be in [0, {self.window_samples / self.sample_rate:g}), "
                             f"got {overlap}")
        self.stride = round((self.window_samples / self.sample_rate - overlap) * self.sample_rate)
        if self.stride % self.hop:
            raise ValueError(f"window - overlap_seconds must be a multiple of {self.hop} samples, "
                             f"got overlap {overlap}")
        self.keep = self.stride // self.hop
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        providers = providers or ["CPUExecutionProvider"]
        sessions = {}
        for part in ("encoder", "decoder"):
            path = os.path.join(onnx_dir, meta[part]["file"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found (listed in {meta_path})")
            sessions[part] = ort.InferenceSession(path, opts, providers=providers)
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]

    def encode_window(self, wav: np.ndarray) -> np.ndarray:
        """One window: (N,) with hop <= N <= window_samples -> (nq, N // hop) int64."""
        if not self.hop <= len(wav) <= self.window_samples:  # the graph crops anything longer
            raise ValueError(f"one encoder call takes {self.hop}..{self.window_samples} samples, got {len(wav)} "
                             "(use encode() for longer audio)")
        return self.encoder.run(["codes"], {"wav": np.ascontiguousarray(wav, dtype=np.float32)[None]})[0]

    def decode_window(self, codes: np.ndarray) -> np.ndarray:
        """One window: (nq, T) with 1 <= T <= window_codes -> (output_hop T,) float32."""
        if not 1 <= codes.shape[1] <= self.window_codes:
            raise ValueError(f"one decoder call takes 1..{self.window_codes} code frames, got {codes.shape[1]} "
                             "(use decode() for longer inputs)")
        return self.decoder.run(["wav"], {"codes": np.ascontiguousarray(codes, dtype=np.int64)})[0][0]

    def encode(self, wav) -> np.ndarray:
        """1-D float waveform at 16 kHz -> int64 codes (nq, N // 1280), windowed as ``XYTokenizer.encode``."""
        wav = np.asarray(wav)
        if wav.ndim != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {wav.shape}")
        if not np.issubdtype(wav.dtype, np.floating):
            raise ValueError(f"expected float samples in [-1, 1], got dtype {wav.dtype}")
        if wav.size < self.hop:
            raise ValueError(f"{wav.size} samples is shorter than one code frame ({self.hop} samples)")
        if not np.isfinite(wav).all():
            raise ValueError("waveform contains NaN or Inf samples")
        n_codes = wav.size // self.hop
        out = np.zeros((self.num_quantizers, n_codes), dtype=np.int64)
        k = 0
        while k * self.keep < n_codes:  # windows whose kept codes are all past the end are skipped
            first = k * self.keep
            codes = self.encode_window(wav[k * self.stride: k * self.stride + self.window_samples])
            n = min(self.keep, n_codes - first)
            out[:, first: first + n] = codes[:, :n]
            k += 1
        return out

    def decode(self, codes) -> np.ndarray:
        """int codes (nq, T) -> float32 waveform (output_hop T,) at output_sample_rate, windowed as
        ``XYTokenizer.decode``."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_quantizers:
            raise ValueError(f"codes must be ({self.num_quantizers}, T), got shape {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        t = codes.shape[1]
        if t == 0:
            raise ValueError("0 code frames")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"code values must be in [0, {self.codebook_size}), "
                             f"got range [{codes.min()}, {codes.max()}]")
        hop = self.output_hop
        out = np.zeros(t * hop, dtype=np.float32)
        k = 0
        while k * self.keep < t:
            first = k * self.keep
            wav = self.decode_window(codes[:, first: first + self.window_codes])
            n = min(self.keep, t - first) * hop
            out[first * hop: first * hop + n] = wav[:n]
            k += 1
        return out
