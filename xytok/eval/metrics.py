"""Signal metrics on 16 kHz float waveforms: PESQ (WB and NB modes), STOI, ESTOI.

Protocol (stated in every summary):
- both signals mono float at 16 kHz (no resampling here: a 16 kHz codec is scored at 16 kHz);
- lengths aligned by truncating both to the shorter one (the number of samples cut is recorded);
- pesq_wb = pesq(16000, ref, deg, 'wb'); pesq_nb = pesq(16000, ref, deg, 'nb') (the library's NB mode
  on the 16 kHz signals, as codec papers' scripts do);
- stoi / estoi = pystoi.stoi(ref, deg, 16000, extended=False/True) (pystoi resamples to 10 kHz).
Any failure raises `MetricError` with a reason; callers record it and never average in a fallback
value (pesq's on_error=RETURN_VALUES would give -7/NaN silently; pystoi returns 0.0 for silence
and 1e-5 for too-short input, which we reject explicitly).
"""
from __future__ import annotations

import warnings

import numpy as np

SAMPLE_RATE = 16000
SIGNAL_METRICS = ("pesq_wb", "pesq_nb", "stoi", "estoi")
# pystoi needs at least ~30 frames of 25.6 ms at 10 kHz after silence removal (below it returns 1e-5).
MIN_STOI_SECONDS = 0.384
SILENCE_RMS = 1e-6


class MetricError(Exception):
    """A metric could not be computed for one utterance; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def align_lengths(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Truncate both signals to the shorter length; return (ref, deg, samples cut from the longer)."""
    n = min(len(ref), len(deg))
    return ref[:n], deg[:n], abs(len(ref) - len(deg))


def check_signal(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise MetricError("not_mono", f"{what} has shape {x.shape}, expected 1-D")
    if x.size == 0:
        raise MetricError("empty", f"{what} is empty")
    x = x.astype(np.float64, copy=False)
    if not np.all(np.isfinite(x)):
        raise MetricError("non_finite", f"{what} contains NaN/Inf")
    return x


def _is_silent(x: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(x * x))) < SILENCE_RMS


def pesq_score(ref: np.ndarray, deg: np.ndarray, mode: str) -> float:
    """PESQ in 'wb' or 'nb' mode at 16 kHz (P.862.2 / P.862 MOS-LQO). Inputs must be equal length."""
    from pesq import PesqError, pesq

    ref, deg = check_signal(ref, "reference"), check_signal(deg, "degraded")
    if len(ref) != len(deg):
        raise MetricError("length_mismatch", f"{len(ref)} vs {len(deg)} samples (align first)")
    # Silence / too-short input are left to the library, which raises for them (mapped below).
    try:
        value = pesq(SAMPLE_RATE, ref, deg, mode)
    except PesqError as e:  # NoUtterancesError, BufferTooShortError, ...
        msg = e.args[0] if e.args else ""
        msg = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
        raise MetricError(f"pesq_{type(e).__name__}", msg) from e
    except ValueError as e:  # e.g. NaN from a speech vs all-zero pair
        raise MetricError("pesq_value_error", str(e)) from e
    if not np.isfinite(value):
        raise MetricError("pesq_non_finite", f"pesq returned {value}")
    return float(value)


def stoi_score(ref: np.ndarray, deg: np.ndarray, extended: bool = False) -> float:
    """(E)STOI by pystoi at 16 kHz. Inputs must be equal length."""
    from pystoi import stoi

    ref, deg = check_signal(ref, "reference"), check_signal(deg, "degraded")
    if len(ref) != len(deg):
        raise MetricError("length_mismatch", f"{len(ref)} vs {len(deg)} samples (align first)")
    if len(ref) < MIN_STOI_SECONDS * SAMPLE_RATE:
        raise MetricError("too_short", f"{len(ref) / SAMPLE_RATE:.3f} s < {MIN_STOI_SECONDS} s")
    if _is_silent(ref):
        raise MetricError("silent_reference", "reference is all silence (pystoi would return 0.0)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = stoi(ref, deg, SAMPLE_RATE, extended=extended)
        except Exception as e:  # pystoi raises bare Exception on mismatches
            raise MetricError("stoi_error", str(e)) from e
    for w in caught:  # pystoi warns and returns 1e-5 when too few frames remain after VAD
        if "frames" in str(w.message).lower():
            raise MetricError("stoi_too_few_frames", str(w.message))
    if not np.isfinite(value):
        raise MetricError("stoi_non_finite", f"pystoi returned {value}")
    return float(value)


METRIC_FUNCS = {
    "pesq_wb": lambda r, d: pesq_score(r, d, "wb"),
    "pesq_nb": lambda r, d: pesq_score(r, d, "nb"),
    "stoi": lambda r, d: stoi_score(r, d, extended=False),
    "estoi": lambda r, d: stoi_score(r, d, extended=True),
}


def compute_signal_metrics(ref: np.ndarray, deg: np.ndarray, metrics) -> tuple[dict, dict, int]:
    """Align lengths, then compute each requested signal metric.

    Returns (values {metric: float}, failures {metric: reason string}, samples cut).
    """
    values, failures = {}, {}
    ref, deg, cut = align_lengths(np.asarray(ref), np.asarray(deg))
    for m in metrics:
        try:
            values[m] = METRIC_FUNCS[m](ref, deg)
        except MetricError as e:
            failures[m] = str(e)
    return values, failures, cut
