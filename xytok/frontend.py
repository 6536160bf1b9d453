"""Whisper-style 80-bin log-mel front end, numerically equal to the official XY-Tokenizer extractor.

The official extractor pads (or truncates) every waveform to 30 s (480000 samples), runs a centred
STFT (n_fft 400, hop 160, periodic Hann, reflect padding), projects the power spectrum on 80
slaney mel filters, takes log10 (clamped at 1e-10), floors each item at (its max - 8) -- the max is
taken over the whole padded array -- and maps v -> (v + 4) / 4.

Padding frames carry no energy, so their log value is -10, the smallest possible one: they never
raise the max. Only the two frames that straddle the end of the signal can, so computing
``ceil(N/160) + 2`` frames gives the official per-item max, and therefore the official values of
every valid frame and of the boundary frames the encoder convolutions see. That is what lets the
codec skip the 30 s padding on short clips (see ``log_mel(..., pad_to_30s=False)``).

Used by the model and by recipe stage 3 (``utterance_log_mel``): one implementation for both.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
N_SAMPLES_30S = 480000  # the official window: 30 s at 16 kHz
N_FRAMES_30S = N_SAMPLES_30S // HOP_LENGTH  # 3000
# Frames past ceil(N/160) that can still contain signal (the STFT window is 400 = 2.5 hops wide).
BOUNDARY_FRAMES = 2


def _hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    above = freq >= min_log_hz
    mels = np.where(above, min_log_mel + np.log(np.maximum(freq, 1e-20) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    above = mels >= min_log_mel
    return np.where(above, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


@lru_cache(maxsize=4)
def mel_filters(n_fft: int = N_FFT, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
                f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """Slaney-scale, slaney-normalised triangular mel filter bank, shape (n_fft//2+1, n_mels), float64.

    Triangles are built on the FFT bin frequencies between mel-spaced corner frequencies and each
    filter is scaled by 2 / (bandwidth in Hz) so that its area is constant (slaney "norm").
    """
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    mel_corners = np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    hz_corners = _mel_to_hz_slaney(mel_corners)
    widths = np.diff(hz_corners)  # (n_mels + 1,)
    slopes = hz_corners[None, :] - fft_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    enorm = 2.0 / (hz_corners[2:n_mels + 2] - hz_corners[:n_mels])
    return fb * enorm[None, :]


_FILTERS_T: dict = {}


def _filters_tensor(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _FILTERS_T:
        # (80, 201) float32, as the official extractor uses it.
        _FILTERS_T[key] = torch.from_numpy(mel_filters().T.astype(np.float32)).to(device)
    return _FILTERS_T[key]


def _as_batch(wav, lengths):
    if not torch.is_tensor(wav):
        wav = torch.as_tensor(np.asarray(wav))
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ValueError(f"log_mel: expected a waveform of shape (N,) or (B, N), got {tuple(wav.shape)}")
    wav = wav.to(torch.float32)
    batch, n = wav.shape
    if lengths is None:
        lengths = torch.full((batch,), n, dtype=torch.long)
    else:
        lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).cpu()
        if lengths.numel() != batch:
            raise ValueError(f"log_mel: {lengths.numel()} lengths for a batch of {batch}")
        if (lengths > n).any() or (lengths < 0).any():
            raise ValueError(f"log_mel: lengths {lengths.tolist()} outside [0, {n}]")
    return wav, lengths


def _log_mel_frames(buf: torch.Tensor) -> torch.Tensor:
    """(B, L) zero-padded buffer -> (B, 80, L//160) log10 mel, centred STFT with reflect padding."""
    window = torch.hann_window(N_FFT, periodic=True, device=buf.device, dtype=torch.float32)
    spec = torch.stft(buf, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec[..., :-1].abs() ** 2  # drop the last frame, as the official extractor does
    mel = _filters_tensor(buf.device) @ power
    return torch.clamp(mel, min=1e-10).log10()


def log_mel(wav, lengths=None, pad_to_30s: bool = False, truncate: bool = True):
    """Official-equivalent Whisper log-mel of a (zero-padded) batch.

    Args:
        wav: float tensor (B, N) at 16 kHz, zero-padded on the right, or a single (N,) waveform.
        lengths: valid samples per item (default: N for all).
        pad_to_30s: True gives exactly the official (B, 80, 3000) features (30-s window).
            False computes only ``max(ceil(N_i/160)) + 2`` frames; frames below mel_length + 2
            are then equal to the official ones (the last frames are the boundary frames that
            the encoder convolutions see), later frames of shorter items hold the official
            padding value (max - 8 + 4) / 4.
        truncate: with True (the official behaviour) items longer than 30 s are cut to 30 s.
            With False (``pad_to_30s`` must be False) the whole signal is analysed with one
            per-item max; this is no longer the official computation (which never sees > 30 s).

    Returns:
        (mel (B, 80, T) float32, mel_lengths LongTensor (B,) = ceil(N_i / 160)).
    """
    wav, lengths = _as_batch(wav, lengths)
    batch = wav.shape[0]
    if truncate:
        lengths = lengths.clamp(max=N_SAMPLES_30S)
        wav = wav[:, :N_SAMPLES_30S]
    elif pad_to_30s:
        raise ValueError("log_mel: pad_to_30s=True implies truncation to 30 s")
    # Zero everything past each item's length: the official extractor pads with zeros.
    n = wav.shape[1]
    valid = torch.arange(n, device=wav.device)[None, :] < lengths.to(wav.device)[:, None]
    wav = wav * valid
    mel_lengths = (lengths + HOP_LENGTH - 1) // HOP_LENGTH

    if pad_to_30s:
        buf_len = N_SAMPLES_30S
    else:
        n_frames = int(mel_lengths.max()) + BOUNDARY_FRAMES if batch else BOUNDARY_FRAMES
        buf_len = n_frames * HOP_LENGTH
        if truncate:
            buf_len = min(buf_len, N_SAMPLES_30S)
        # Below the 30-s limit the right reflect padding then only ever reflects zeros, exactly
        # like the official buffer's zero tail; at the limit it is the official buffer itself.
    if buf_len > n:
        wav = torch.nn.functional.pad(wav, (0, buf_len - n))
    else:
        wav = wav[:, :buf_len]
    if buf_len < N_FFT // 2 + 1:  # reflect padding needs > 200 samples; zeros reflect to zeros
        wav = torch.nn.functional.pad(wav, (0, N_FFT // 2 + 1 - buf_len))
    logspec = _log_mel_frames(wav)[:, :, : buf_len // HOP_LENGTH]
    # Per-item max over the whole array (padding included), then floor at max - 8.
    max_val = logspec.amax(dim=(1, 2), keepdim=True)
    logspec = torch.maximum(logspec, max_val - 8.0)
    return ((logspec + 4.0) / 4.0).contiguous(), mel_lengths


def utterance_log_mel(wav_1d) -> np.ndarray:
    """Features of one utterance as recipe stage 3 stores them: (ceil(N/160), 80) float32.

    For N <= 30 s this equals the first ceil(N/160) frames the model sees (official values).
    Longer utterances are NOT truncated: the whole utterance is analysed with one max (the model
    itself never sees > 30 s at once: it chunks raw audio, so these frames are for training
    crops / analysis only).
    """
    wav = torch.as_tensor(np.asarray(wav_1d, dtype=np.float32))
    if wav.dim() != 1:
        raise ValueError(f"utterance_log_mel: expected a 1-D waveform, got shape {tuple(wav.shape)}")
    if wav.numel() == 0:
        raise ValueError("utterance_log_mel: empty waveform")
    if not torch.isfinite(wav).all():
        raise ValueError("utterance_log_mel: waveform contains NaN or Inf")
    mel, mel_len = log_mel(wav, truncate=wav.numel() <= N_SAMPLES_30S)
    return mel[0, :, : int(mel_len[0])].T.contiguous().numpy()
