"""The XY-Tokenizer generator: 16 kHz speech <-> 8 x 1024 RVQ codes at 12.5 Hz -> speech at the
decoder's output rate (16 kHz as released; 24 or 32 kHz for decoders retrained in stage 2).

wav -> log-mel (100 Hz) -> semantic encoder + adapter | acoustic encoder (50 Hz) -> concat ->
pre-RVQ adapter -> ResidualDownConv x4 (12.5 Hz) -> ResidualVQ -> post-RVQ adapter -> UpConv x4
(50 Hz) -> acoustic decoder (100 Hz) -> Vocos ISTFT (hop_size samples per 100 Hz frame) -> R Hz.

Rates (field names of the released TTSD configs, in ``generator_params`` or at the top level of the
YAML): ``input_sample_rate`` (16000: the Whisper front end), ``output_sample_rate`` (R),
``encoder_downsample_rate`` (1280 input samples per code frame) and ``decoder_upsample_rate``
(output samples per code frame = Vocos hop_size x 2 x 4: 1280 at 16 kHz, 1920 at 24 kHz, 2560 at
32 kHz). Absent fields are derived from the modules; given ones must agree (ValueError naming the
config). ``codec.sample_rate`` is the OUTPUT rate (what ``decode`` returns; the name is kept for
API compatibility), ``codec.input_sample_rate`` the rate ``encode`` takes.

Two levels of API:

* ``encode`` / ``decode``: lists of variable-length items, chunked exactly like the released
  ``encode``/``decode`` (30-s windows, ``overlap_seconds`` of look-ahead, hard concatenation).
  ``mode="fast"`` (default) computes only the frames each chunk needs and batches chunks of
  similar length; ``mode="padded"`` is the official computation (every encode chunk padded to
  30 s, decode batches padded to their longest item) kept as a reference.
* ``tokenize`` / ``detokenize_from_zq`` / ``decode_codes`` / ``detokenize``: differentiable
  building blocks on one padded batch of <= 30 s (used by training and by the golden tests).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import yaml

from xytok.checkpoint import CheckpointMismatchError, load_state_strict, read_generator_state
from xytok.frontend import HOP_LENGTH, N_FFT, N_MELS, N_SAMPLES_30S, log_mel
from xytok.nn.decoder import AudioDecoder
from xytok.nn.encoder import AudioEncoder
from xytok.nn.rvq import ResidualVQ
from xytok.nn.sampling import ResidualDownConv, UpConv
from xytok.nn.transformer import Transformer
from xytok.nn.vocos import Vocos
from xytok.pretrained import RATE_FIELDS, resolve_rates  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

MODES = ("fast", "padded")


def _check_frontend_config(fe: dict) -> None:
    expected = {"feature_size": N_MELS, "hop_length": HOP_LENGTH, "n_fft": N_FFT,
                "n_samples": N_SAMPLES_30S, "sampling_rate": 16000}
    wrong = {k: (fe[k], v) for k, v in expected.items() if k in fe and fe[k] != v}
    if wrong:
        raise ValueError("feature_extractor_kwargs differ from the supported Whisper front end: "
                         + ", ".join(f"{k}={got} (supported: {want})" for k, (got, want) in wrong.items()))


class XYTokenizer(nn.Module):
    """The generator, built from the released ``generator_params`` (module names = released keys).

    ``sample_rate``: the OUTPUT rate (decode); ``input_sample_rate``: 16000 (encode); see the
    module docstring for the rate fields and ``resolve_rates`` for their checks."""

    def __init__(self, generator_params: dict, source: str = "<config>"):
        super().__init__()
        p = generator_params
        _check_frontend_config(p.get("feature_extractor_kwargs", {}))
        rates = resolve_rates(p, source)
        self.input_sample_rate = rates["input_sample_rate"]
        self.sample_rate = rates["output_sample_rate"]
        self.decoder_upsample_rate = rates["decoder_upsample_rate"]
        self.generator_params = p
        # Registration order = released state-dict order.
        for name, cls in (("semantic_encoder", AudioEncoder), ("semantic_encoder_adapter", Transformer),
                          ("acoustic_encoder", AudioEncoder), ("pre_rvq_adapter", Transformer),
                          ("downsample", ResidualDownConv), ("quantizer", ResidualVQ),
                          ("post_rvq_adapter", Transformer), ("upsample", UpConv),
                          ("acoustic_decoder", AudioDecoder), ("vocos", Vocos)):
            try:
                module = cls(**p[f"{name}_kwargs"])
            except TypeError as exc:  # unknown / missing keys: name the config section
                raise ValueError(f"generator_params.{name}_kwargs: {exc}") from exc
            setattr(self, name, module)
        # 1280 input samples per code frame: mel hop x encoder stride x downsample factor.
        self.code_hop = HOP_LENGTH * self.acoustic_encoder.stride_size * self.downsample.factor
        if self.code_hop != rates["encoder_downsample_rate"] or \
                self.vocos.hop_size * self.acoustic_decoder.stride_size * self.upsample.stride != self.decoder_upsample_rate:
            raise ValueError(f"{source}: module strides disagree with the rate fields {rates}")
        self.window_samples = N_SAMPLES_30S  # encoder window, input samples
        self.window_codes = self.window_samples // self.code_hop  # 375

    @property
    def output_sample_rate(self) -> int:
        """= ``sample_rate`` (the rate ``decode`` returns), under the TTSD config's name."""
        return self.sample_rate

    @property
    def encoder_downsample_rate(self) -> int:
        """Input (16 kHz) samples per code frame: 1280."""
        return self.code_hop

    @property
    def num_quantizers(self) -> int:
        return self.quantizer.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def frame_rate(self) -> float:
        """Code frames per second (12.5 for every released model)."""
        return self.input_sample_rate / self.code_hop

    def bitrate(self, num_quantizers: int | None = None) -> float:
        """Bits per second of ``num_quantizers`` code layers (default all): n * log2(codebook) * frame rate."""
        n = self._num_layers(num_quantizers)
        return n * math.log2(self.codebook_size) * self.frame_rate

    def _num_layers(self, num_quantizers: int | None) -> int:
        """``num_quantizers`` checked against the model (None = all layers)."""
        if num_quantizers is None:
            return self.num_quantizers
        if isinstance(num_quantizers, bool) or not isinstance(num_quantizers, (int, np.integer)) \
                or not 1 <= num_quantizers <= self.num_quantizers:
            raise ValueError(f"num_quantizers must be an integer in [1, {self.num_quantizers}] "
                             f"(the model's RVQ layers), got {num_quantizers!r}")
        return int(num_quantizers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # transformers-style entry points (MimiModel / DacModel shape); the work is in load_codec.
    @classmethod
    def from_pretrained(cls, name_or_dir, device="cpu", revision=None, cache_dir=None) -> "XYTokenizer":
        """``load_codec(name_or_dir)``: a hub id or a directory (config + weights), in eval mode."""
        return load_codec(name_or_dir, device=device, revision=revision, cache_dir=cache_dir)

    def save_pretrained(self, out_dir, ckpt: bool = True):
        """Write ``config.yaml`` + ``model.safetensors`` (+ released-format ``model.ckpt``) to ``out_dir``."""
        from xytok.pretrained import save_pretrained

        return save_pretrained(self, out_dir, ckpt=ckpt)

    # ------------------------------------------------------------------ differentiable blocks
    def wav_to_mel(self, wav: torch.Tensor, lengths: torch.Tensor, pad_to_30s: bool = False):
        """(B, N) zero-padded wav (N <= 30 s) -> (mel (B, 80, T), mel_lengths). See frontend.log_mel."""
        mel, mel_lengths = log_mel(wav, lengths, pad_to_30s=pad_to_30s)
        return mel, mel_lengths.to(mel.device)

    def tokenize(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> dict:
        """Encoders -> pre-RVQ adapter -> downsample -> quantizer, on one padded batch (<= 30 s).

        Args: mel (B, 80, T100) as from ``wav_to_mel`` (official values on frames < mel_length+1),
        mel_lengths (B,).
        Returns a dict:
            semantic_encoder_output (B, D, T50), semantic (B, D, T50) = semantic adapter output,
            acoustic (B, D, T50) = acoustic encoder output, encoder_lengths (B,),
            pre_rvq (B, D, T50), downsample_output (B, 4D, T), zq (B, 4D, T) quantizer output,
            codes (nq, B, T) long, codes_lengths (B,), commit_loss (scalar), quantizer_stats.
        T50 = ceil(T100 / 2) and T = ceil(T50 / 4) (375 for a 30-s padded input); trimmed inputs
        may carry one or two frames past max(codes_lengths): crop by codes_lengths. In ``.train()`` the quantizer learns (EMA / k-means / dropout);
        in ``.eval()`` this is the official inference.
        """
        mel_lengths = mel_lengths.to(mel.device)
        sem, enc_lengths = self.semantic_encoder(mel, mel_lengths)
        sem_adapted, _ = self.semantic_encoder_adapter(sem, enc_lengths)
        acoustic, _ = self.acoustic_encoder(mel, mel_lengths)
        pre, _ = self.pre_rvq_adapter(torch.cat([sem_adapted, acoustic], dim=1), enc_lengths)
        down, codes_lengths = self.downsample(pre, enc_lengths)
        zq, codes, commit_loss, stats = self.quantizer(down, codes_lengths)
        return {
            "semantic_encoder_output": sem, "semantic": sem_adapted, "acoustic": acoustic,
            "encoder_lengths": enc_lengths, "pre_rvq": pre, "downsample_output": down,
            "zq": zq, "codes": codes, "codes_lengths": codes_lengths,
            "commit_loss": commit_loss, "quantizer_stats": stats,
        }

    def decode_codes(self, codes: torch.Tensor, num_quantizers: int | None = None) -> torch.Tensor:
        """codes (nq', B, T) -> zq (B, 4D, T): sum of codewords, then output_proj (no mask).

        ``num_quantizers`` = n uses only the first n layers (codes are cut to n rows; fewer than n
        is an error): the residual VQ's coarse-to-fine reconstruction, the same sum that training
        with quantizer dropout decodes for an item given n layers. Default: every row given.
        """
        if num_quantizers is not None:
            n = self._num_layers(num_quantizers)
            if codes.dim() != 3 or codes.shape[0] < n:
                raise ValueError(f"decode_codes: num_quantizers={n} needs codes (>= {n}, B, T), "
                                 f"got {tuple(codes.shape)}")
            codes = codes[:n]
        return self.quantizer.decode_codes(codes)

    def detokenize_from_zq(self, zq: torch.Tensor, codes_lengths: torch.Tensor) -> dict:
        """Post-RVQ adapter -> upsample -> acoustic decoder -> Vocos, on one padded batch.

        Returns a dict: post_rvq (B, 4D, T), upsampled (B, D, 4T), mel_out (B, 80, 8T) decoder
        features, mel_out_lengths (B,), wav (B, U T), wav_lengths (B,) = U codes_lengths, with
        U = decoder_upsample_rate (1280 at 16 kHz, 1920 at 24 kHz) output samples per code.
        Samples near the end of a shorter item are affected by its padding (Vocos has no mask):
        decode items at their own length for the official single-item result.
        """
        codes_lengths = codes_lengths.to(zq.device)
        post, _ = self.post_rvq_adapter(zq, codes_lengths)
        up, up_lengths = self.upsample(post, codes_lengths)
        feats, feat_lengths = self.acoustic_decoder(up, up_lengths)
        wav, wav_lengths = self.vocos(feats, feat_lengths)
        return {"post_rvq": post, "upsampled": up, "mel_out": feats, "mel_out_lengths": feat_lengths,
                "wav": wav[:, 0], "wav_lengths": wav_lengths}

    def detokenize(self, codes: torch.Tensor, codes_lengths: torch.Tensor,
                   num_quantizers: int | None = None) -> dict:
        """Official ``inference_detokenize``: codes (nq, B, T) -> detokenize_from_zq(decode_codes).

        ``num_quantizers``: decode from the first n code layers only (see ``decode_codes``)."""
        return self.detokenize_from_zq(self.decode_codes(codes, num_quantizers), codes_lengths)

    # ------------------------------------------------------------------ input checks
    def _check_wavs(self, wavs) -> list:
        if torch.is_tensor(wavs) or isinstance(wavs, np.ndarray):
            raise TypeError("encode() takes a list of 1-D waveforms, not a single tensor/array")
        out = []
        for i, w in enumerate(wavs):
            w = torch.as_tensor(w)
            if w.dim() != 1:
                raise ValueError(f"item {i}: expected a 1-D waveform, got shape {tuple(w.shape)}")
            if not (w.is_floating_point()):
                raise ValueError(f"item {i}: expected float samples in [-1, 1], got dtype {w.dtype}")
            if w.numel() < self.code_hop:
                raise ValueError(f"item {i}: {w.numel()} samples is shorter than one code frame "
                                 f"({self.code_hop} samples = 80 ms at 16 kHz); it would give 0 codes")
            if not torch.isfinite(w).all():
                raise ValueError(f"item {i}: waveform contains NaN or Inf samples")
            out.append(w.to(torch.float32))
        return out

    def _check_codes(self, codes_list, num_quantizers: int | None = None) -> list:
        """Checked (n, T) long codes per item: rows n..nq are accepted and cut to the first n."""
        n = self._num_layers(num_quantizers)
        if torch.is_tensor(codes_list) or isinstance(codes_list, np.ndarray):
            raise TypeError("decode() takes a list of (nq, T) code tensors, not a single tensor/array")
        out = []
        for i, c in enumerate(codes_list):
            c = torch.as_tensor(c)
            if c.dim() != 2:
                raise ValueError(f"item {i}: codes must be (nq, T), got shape {tuple(c.shape)}")
            if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
                raise ValueError(f"item {i}: codes must be integers, got dtype {c.dtype}")
            if c.shape[0] > self.num_quantizers or c.shape[0] < n:
                want = f"{self.num_quantizers}" if n == self.num_quantizers else \
                    f"{n}..{self.num_quantizers} (num_quantizers={n})"
                raise ValueError(f"item {i}: codes have {c.shape[0]} quantizer rows, the model has "
                                 f"{self.num_quantizers}; decoding needs {want} "
                                 f"(expected shape (nq, T), got {tuple(c.shape)})")
            if c.shape[1] == 0:
                raise ValueError(f"item {i}: 0 code frames")
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"item {i}: code values must be in [0, {self.codebook_size}), "
                                 f"got range [{lo}, {hi}]")
            out.append(c[:n].long())
        return out

    def _chunking(self, overlap_seconds: float):
        """(stride in input samples, kept code frames per chunk): the same code windows for
        encode and decode, whatever the output rate."""
        rate = self.input_sample_rate
        if not 0 <= overlap_seconds < self.window_samples / rate:
            raise ValueError(f"overlap_seconds must be in [0, 30), got {overlap_seconds}")
        stride = round((self.window_samples / rate - overlap_seconds) * rate)
        if stride % self.code_hop:
            raise ValueError(f"30 - overlap_seconds must be a multiple of 80 ms, got overlap {overlap_seconds}")
        return stride, stride // self.code_hop

    # ------------------------------------------------------------------ list API
    @torch.no_grad()
    def encode(self, wavs, overlap_seconds: float = 10, batch_size: int = 8, mode: str = "fast",
               progress=None, max_batch_seconds: float = 60.0) -> list:
        """list of 1-D float waveforms (16 kHz) -> list of LongTensor (nq, floor(N_i / 1280)).

        Chunking as the released ``encode``: chunk k of an item covers samples
        [k*stride, k*stride + 30 s) with stride = 30 s - overlap; each chunk is tokenized on its
        own and its first stride/1280 codes are kept (the rest is look-ahead context only).
        mode="fast" trims each chunk to the frames it needs (plus the boundary frames the
        encoder convolutions see, with their official padded values) and batches chunks of
        similar length; codes equal the official ones. mode="padded" pads every chunk to 30 s
        like the official code. A model call holds at most ``batch_size`` chunks and at most
        ``max_batch_seconds`` of (padded) audio, but always one chunk: memory does not grow with
        the input length (a 10-minute file needs what two 30-s windows need).

        Raises ValueError naming the item for: non 1-D input, NaN/Inf, < 1280 samples.
        ``progress``: optional callable(n_done_chunks, n_total_chunks).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        wavs = self._check_wavs(wavs)
        stride, keep = self._chunking(overlap_seconds)
        device = self.device
        n_codes = [w.numel() // self.code_hop for w in wavs]
        results = [torch.zeros(self.num_quantizers, t, dtype=torch.long) for t in n_codes]
        # Work units: (item, first kept code, samples). Chunks whose codes are all cut are skipped.
        units = []
        for i, w in enumerate(wavs):
            k = 0
            while k * keep < n_codes[i]:
                start = k * stride
                units.append((i, k * keep, w[start: start + self.window_samples]))
                k += 1
        units.sort(key=lambda u: -u[2].numel())
        max_batch_samples = max_batch_seconds * self.input_sample_rate
        batches, done = [], 0
        for unit in units:  # sorted longest first: the first unit of a batch sets its width
            width = self.window_samples if mode == "padded" else batches[-1][0][2].numel() if batches else 0
            # fast mode: only batch chunks of similar length (padding a short chunk to a long
            # one would spend what trimming saved)
            similar = mode == "padded" or unit[2].numel() >= 0.75 * width
            if batches and similar and len(batches[-1]) < batch_size and \
                    (len(batches[-1]) + 1) * width <= max_batch_samples:
                batches[-1].append(unit)
            else:
                batches.append([unit])
        for batch in batches:
            lengths = torch.tensor([u[2].numel() for u in batch])
            wav = torch.zeros(len(batch), int(lengths.max()))
            for j, u in enumerate(batch):
                wav[j, : u[2].numel()] = u[2]
            mel, mel_lengths = self.wav_to_mel(wav.to(device), lengths.to(device), pad_to_30s=mode == "padded")
            codes = self.tokenize(mel, mel_lengths)["codes"].cpu()
            for j, (i, first, _) in enumerate(batch):
                n = min(keep, n_codes[i] - first)
                results[i][:, first: first + n] = codes[:, j, :n]
            done += len(batch)
            if progress is not None:
                progress(done, len(units))
        return results

    @torch.no_grad()
    def decode(self, codes_list, overlap_seconds: float = 10, batch_size: int = 8, mode: str = "fast",
               progress=None, max_batch_seconds: float = 60.0, num_quantizers: int | None = None) -> list:
        """list of LongTensor (nq, T_i) -> list of 1-D float tensors of U*T_i samples at
        ``sample_rate`` (U = decoder_upsample_rate: 1280 samples at 16 kHz, 1920 at 24 kHz).

        ``num_quantizers`` = n in [1, nq] decodes from the first n RVQ layers only (a lower bit
        rate, ``bitrate(n)``): items may hold n..nq rows and are cut to n. Default: all nq layers.

        Chunking as the released ``decode``: chunk k covers codes [k*keep, k*keep + 375), keep =
        stride/1280 (250 for overlap 10, at any output rate); the first keep*U output samples of
        each chunk are kept and concatenated. mode="fast" decodes every chunk at its own length (batching only chunks of
        equal length), so each item's result equals the official single-item decode and does not
        depend on the rest of the batch. mode="padded" is the official batch decode (items padded
        to the longest one, whose padding leaks into the last ~0.1 s of shorter items).

        Raises ValueError naming the item for: not (nq, T), wrong nq (fewer rows than n, more than
        the model's), non-integer, out-of-range codes, T = 0; and for n outside [1, nq].
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        codes_list = self._check_codes(codes_list, num_quantizers)
        _, keep = self._chunking(overlap_seconds)
        if mode == "padded":
            return self._decode_padded(codes_list, keep, batch_size, progress)
        device = self.device
        hop = self.decoder_upsample_rate  # output samples per code frame
        results = [torch.zeros(c.shape[1] * hop) for c in codes_list]
        groups = defaultdict(list)  # chunk length -> [(item, first code, codes)]
        for i, c in enumerate(codes_list):
            k = 0
            while k * keep < c.shape[1]:
                chunk = c[:, k * keep: k * keep + self.window_codes]
                groups[chunk.shape[1]].append((i, k * keep, chunk))
                k += 1
        total, done = sum(len(g) for g in groups.values()), 0
        for length in sorted(groups, reverse=True):
            units = groups[length]
            # at most batch_size chunks and max_batch_seconds of audio per call (>= one chunk)
            per_call = max(1, min(batch_size, int(max_batch_seconds * self.sample_rate) // (length * hop)))
            for b0 in range(0, len(units), per_call):
                batch = units[b0: b0 + per_call]
                codes = torch.stack([u[2] for u in batch], dim=1).to(device)
                lengths = torch.full((len(batch),), length, dtype=torch.long, device=device)
                wav = self.detokenize(codes, lengths)["wav"].cpu()
                for j, (i, first, _) in enumerate(batch):
                    n = min(keep, results[i].numel() // hop - first) * hop
                    results[i][first * hop: first * hop + n] = wav[j, :n]
                done += len(batch)
                if progress is not None:
                    progress(done, total)
        return results

    def _decode_padded(self, codes_list, keep, batch_size, progress):
        """Official batch decode: pad to the longest item, chunk the batch, hard-concatenate."""
        device = self.device
        hop = self.decoder_upsample_rate
        results = [torch.zeros(c.shape[1] * hop) for c in codes_list]
        for b0 in range(0, len(codes_list), batch_size):
            items = codes_list[b0: b0 + batch_size]
            lens = torch.tensor([c.shape[1] for c in items])
            t_max = int(lens.max())
            padded = torch.zeros(items[0].shape[0], len(items), t_max, dtype=torch.long)
            for j, c in enumerate(items):
                padded[:, j, : c.shape[1]] = c
            k = 0
            while k * keep < t_max:
                first = k * keep
                chunk = padded[:, :, first: first + self.window_codes]
                chunk_lens = (lens - first).clamp(min=0, max=chunk.shape[2])
                wav = self.detokenize(chunk.to(device), chunk_lens.to(device))["wav"].cpu()
                for j in range(len(items)):
                    n = min(keep * hop, int(chunk_lens[j]) * hop)
                    results[b0 + j][first * hop: first * hop + n] = wav[j, :n]
                k += 1
            if progress is not None:
                progress(min(b0 + batch_size, len(codes_list)), len(codes_list))
        return results

    def decode_stream(self, codes, frames_per_push: int | None = None, overlap_seconds: float = 10,
                      num_quantizers: int | None = None):
        """Streaming decode of one utterance (a decoder trained causal in stage 2): yields 1-D audio
        pieces as soon as they are final; together they equal ``decode([codes], ...)[0]`` (<= 1e-4).
        ``codes``: (nq, T) fed ``frames_per_push`` frames at a time, or an iterable of (nq, n) pieces.
        A non-causal model raises NotStreamableError. See xytok.streaming (latency, > 30 s)."""
        from xytok.streaming import decode_stream

        return decode_stream(self, codes, frames_per_push, overlap_seconds, num_quantizers)


def _read_config(config) -> dict:
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"codec config not found: {path}")
        with open(path) as f:
            config = yaml.safe_load(f)
        source = path
    else:
        source = "<config dict>"
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a YAML mapping with generator_params")
    params = config.get("generator_params", config)
    if params is not config:  # rate fields may sit at the top level too (TTSD / transformers layout)
        top = {k: config[k] for k in RATE_FIELDS if k in config}
        clash = {k: (v, params[k]) for k, v in top.items() if k in params and params[k] != v}
        if clash:
            raise ValueError(f"{source}: rate fields differ between the top level and generator_params: "
                             + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in clash.items()))
        if any(k not in params for k in top):
            params = {**params, **top}
        if "sample_rate" in config and "sample_rate" not in params and "output_sample_rate" not in params:
            params = {**params, "sample_rate": config["sample_rate"]}
    required = ["semantic_encoder_kwargs", "semantic_encoder_adapter_kwargs", "acoustic_encoder_kwargs",
                "pre_rvq_adapter_kwargs", "downsample_kwargs", "quantizer_kwargs",
                "post_rvq_adapter_kwargs", "upsample_kwargs", "acoustic_decoder_kwargs", "vocos_kwargs"]
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"{source}: generator_params lacks {', '.join(missing)}")
    return params, source


def build_codec(config) -> XYTokenizer:
    """Random-initialised generator (VQ codebooks not inited: training k-means-initialises them)."""
    params, source = _read_config(config)
    return XYTokenizer(params, source=source)


# The MOSS-TTSD release names the vocoder ``enhanced_vocos`` (same module, same parameters).
_RELEASED_ALIASES = (("enhanced_vocos.", "vocos."),)


def load_generator_checkpoint(codec: nn.Module, path) -> None:
    """xytok.checkpoint.load_generator_checkpoint, also accepting the MOSS-TTSD 24/32 kHz
    releases' module name (``enhanced_vocos.*`` -> ``vocos.*``)."""
    state = read_generator_state(path)
    for old, new in _RELEASED_ALIASES:
        if any(k.startswith(old) for k in state):
            state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    load_state_strict(codec, state, source=os.fspath(path))


def load_codec(config, ckpt_path=None, device="cpu", revision=None, cache_dir=None) -> XYTokenizer:
    """Build the generator and load its weights strictly; returned in eval mode on ``device``.

    ``config`` is one of:
      - a released-format YAML file or a dict (``generator_params``); ``ckpt_path`` (``.ckpt`` or
        ``.safetensors``) is loaded into it, ``ckpt_path=None`` gives a random initialisation;
      - a directory holding a config and weights (``config.yaml`` + ``model.safetensors`` /
        ``model.ckpt``, the released ``xy_tokenizer.ckpt``, or a training exp dir's ``export/``);
      - a Hugging Face hub id (``"fdugyt/XY_Tokenizer"``), optionally at ``revision``, fetched
        through huggingface_hub's cache (``HF_HUB_OFFLINE=1`` reads only the cache).
    See xytok.pretrained for the file names looked for.
    """
    if isinstance(config, (str, os.PathLike)) and not os.path.isfile(os.path.expanduser(os.fspath(config))) \
            and not os.fspath(config).endswith((".yaml", ".yml")):
        from xytok.pretrained import resolve_codec_files

        files = resolve_codec_files(config, ckpt_path=ckpt_path, revision=revision, cache_dir=cache_dir)
        config, ckpt_path = files.config, files.weights
        if files.bundled_config:  # a mismatch then means "not the released model": say which config
            codec = build_codec(config)
            try:
                load_generator_checkpoint(codec, ckpt_path)
            except CheckpointMismatchError as exc:
                raise CheckpointMismatchError(
                    f"{files.source}: no config file came with {ckpt_path}, so the released 16 kHz config "
                    f"{config} was used, and the weights do not fit it; put the model's config.yaml "
                    f"beside them.\n{exc}") from exc
            return codec.to(device).eval()
    elif revision is not None:
        raise ValueError("revision= is for hub ids; give the config file and checkpoint without it")
    codec = build_codec(config)
    if ckpt_path is not None:
        load_generator_checkpoint(codec, ckpt_path)
    return codec.to(device).eval()
