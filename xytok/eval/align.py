"""Time alignment of a reconstruction to its reference before signal metrics.

Codecs may delay their output (causal convolutions, look-ahead, resampler filters), so plain
truncation to the shorter signal can compare samples that are a few milliseconds apart, which
PESQ tolerates but STOI and waveform metrics punish. ``align_by_xcorr`` finds the lag L within
±max_lag samples that maximises the cross-correlation of the two signals (hyp[n + L] ≈ ref[n]),
shifts the reconstruction by it and then truncates both to their common length. The lag is
returned so it can be recorded per utterance.
"""
from __future__ import annotations

import numpy as np


def xcorr_lag(ref: np.ndarray, hyp: np.ndarray, max_lag: int) -> int:
    """Lag L in [-max_lag, max_lag] maximising sum_n ref[n] * hyp[n + L] (FFT cross-correlation);
    0 for silent input or max_lag <= 0. Positive L: the reconstruction is late by L samples."""
    ref = np.asarray(ref, dtype=np.float64)
    hyp = np.asarray(hyp, dtype=np.float64)
    if max_lag <= 0 or not ref.size or not hyp.size or not np.any(ref) or not np.any(hyp):
        return 0
    n = ref.size + hyp.size - 1
    size = 1 << (n - 1).bit_length()
    # corr[k] = sum_n hyp[n + k] * ref[n]; negative k wrap around to the end of the array
    corr = np.fft.irfft(np.fft.rfft(hyp, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.arange(-min(max_lag, ref.size - 1), min(max_lag, hyp.size - 1) + 1)
    values = corr[lags % size]
    # ties (e.g. a periodic signal) go to the smallest |lag|: no shift unless it helps
    best = np.flatnonzero(values >= values.max() - 1e-12 * max(1.0, abs(values.max())))
    return int(lags[best[np.argmin(np.abs(lags[best]))]])


def align_by_xcorr(ref: np.ndarray, hyp: np.ndarray, max_lag: int):
    """(ref', hyp', lag, samples cut): hyp shifted by the cross-correlation lag (xcorr_lag), then
    both truncated to their common length; samples cut counts both sides, as plain truncation's."""
    lag = xcorr_lag(ref, hyp, max_lag)
    r, h = (ref, hyp[lag:]) if lag >= 0 else (ref[-lag:], hyp)
    n = min(len(r), len(h))
    return r[:n], h[:n], lag, (len(ref) - n) + (len(hyp) - n)
