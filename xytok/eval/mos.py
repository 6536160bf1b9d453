"""Reference-free MOS predictors: DNSMOS (Microsoft DNS challenge, P.835 SIG/BAK/OVRL + P.808).

Protocol (stated in summary.json): the ONNX models shipped inside the `speechmos` wheel
(`dnsmos_models/sig_bak_ovr.onnx` + `model_v8.onnx`, non-personalised), so it runs offline; 16 kHz
mono float input clipped to [-1, 1] (speechmos rejects anything outside); clips shorter than 9.01 s
are tiled to 9.01 s and longer ones averaged over 9.01 s windows with a 1 s hop, as speechmos does;
the P.835 outputs go through DNSMOS's polynomial calibration. Per utterance:
  dnsmos = OVRL of the reconstruction, dnsmos_sig / dnsmos_bak / dnsmos_p808 = its SIG/BAK/P.808,
  dnsmos_ref = OVRL of the reference (the ceiling the codec is judged against).
UTMOS (the UTMOS22 strong learner; speechmos ships no UTMOS model) is xytok.eval.utmos.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
DNSMOS_KEYS = ("dnsmos", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "dnsmos_ref")
PROTOCOL = ("DNSMOS P.835 OVRL of the reconstruction (also SIG/BAK/P.808, and OVRL of the reference as "
            "dnsmos_ref), speechmos' bundled ONNX models (non-personalised), input clipped to [-1, 1], "
            "clips tiled/windowed to 9.01 s as speechmos does")
MIN_SECONDS = 0.1
SILENCE_RMS = 1e-6


class MosError(Exception):
    pass


# MOS metrics scored on both sides: the metric -> its per-utterance keys (reconstruction first)
EXPANDED_KEYS = {"dnsmos": DNSMOS_KEYS, "utmos": ("utmos", "utmos_ref")}


def output_columns(metrics) -> list:
    """The scored metric list with `dnsmos`/`utmos` expanded into all their per-utterance keys."""
    out = []
    for m in metrics:
        out += list(EXPANDED_KEYS.get(m, (m,)))
    return out


class DnsmosScorer:
    """Built once per process; loads the two ONNX models from the installed speechmos package."""

    name = "dnsmos"

    def __init__(self):
        import os
        from importlib.metadata import version

        import onnxruntime as ort
        from speechmos import dnsmos as sm

        root = os.path.join(os.path.dirname(os.path.abspath(sm.__file__)), "dnsmos_models")
        primary, p808 = os.path.join(root, "sig_bak_ovr.onnx"), os.path.join(root, "model_v8.onnx")
        for p in (primary, p808):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"DNSMOS model {p} missing from the speechmos package")
        # One intra-op thread: scoring parallelism comes from --nj processes (see scoring.py).
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        # Reuse speechmos' feature/windowing code, with sessions built from our options.
        self._impl = sm.DNSMOS.__new__(sm.DNSMOS)
        self._impl.primary_model_path = primary
        self._impl.onnx_sess = ort.InferenceSession(primary, opts, providers=["CPUExecutionProvider"])
        self._impl.p808_onnx_sess = ort.InferenceSession(p808, opts, providers=["CPUExecutionProvider"])
        self.model_name = f"speechmos-{version('speechmos')} dnsmos_models/sig_bak_ovr.onnx + model_v8.onnx"

    def score(self, wav: np.ndarray, what: str = "audio") -> dict:
        """{"ovrl", "sig", "bak", "p808"} of one 16 kHz mono waveform; MosError for unusable input."""
        x = np.asarray(wav, dtype=np.float64)
        if x.ndim != 1:
            raise MosError(f"{what} has shape {x.shape}, expected 1-D")
        if x.size < MIN_SECONDS * SAMPLE_RATE:
            raise MosError(f"{what} is {x.size} samples, shorter than {MIN_SECONDS} s")
        if not np.all(np.isfinite(x)):
            raise MosError(f"{what} contains NaN/Inf")
        # all-zero input would make speechmos' p808 mel (power_to_db ref=max) meaningless
        if float(np.sqrt(np.mean(x * x))) < SILENCE_RMS:
            raise MosError(f"{what} is silent")
        x = np.clip(x, -1.0, 1.0).astype(np.float32)
        out = self._impl(x, SAMPLE_RATE, False)
        vals = {k: float(out[f"{k}_mos"]) for k in ("ovrl", "sig", "bak", "p808")}
        if not all(np.isfinite(v) for v in vals.values()):
            raise MosError(f"DNSMOS returned non-finite values {vals} for {what}")
        return vals


def dnsmos_values(scorer: DnsmosScorer, ref: np.ndarray, hyp: np.ndarray) -> tuple[dict, dict]:
    """(values, failures) over DNSMOS_KEYS for one utterance; the two sides fail independently."""
    values, failures = {}, {}
    try:
        h = scorer.score(hyp, "reconstruction")
        values.update({"dnsmos": h["ovrl"], "dnsmos_sig": h["sig"], "dnsmos_bak": h["bak"], "dnsmos_p808": h["p808"]})
    except Exception as e:  # noqa: BLE001 - recorded per utterance, never averaged in
        failures.update({k: f"dnsmos_failed: {type(e).__name__}: {e}" for k in DNSMOS_KEYS if k != "dnsmos_ref"})
    try:
        values["dnsmos_ref"] = scorer.score(ref, "reference")["ovrl"]
    except Exception as e:  # noqa: BLE001
        failures["dnsmos_ref"] = f"dnsmos_failed: {type(e).__name__}: {e}"
    return values, failures
