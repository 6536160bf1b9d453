"""Score reconstructions against references: signal metrics, SIM and ASR transcripts per utterance
(parallel over processes), then corpus WER and summary statistics.

Each worker process runs with one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)): the metric
libraries and resemblyzer oversubscribe the CPU otherwise; parallelism comes from `nj` processes.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field


from xytok.eval.inputs import AudioReadError, load_wav
from xytok.eval.metrics import SIGNAL_METRICS, compute_signal_metrics
from xytok.progress import ProgressLog

ALL_METRICS = SIGNAL_METRICS + ("sim", "wer")
log = logging.getLogger("xytok.score")


@dataclass
class ScoreConfig:
    metrics: tuple = ("pesq_wb", "pesq_nb", "stoi", "estoi", "sim", "wer")
    asr_backend: str = "pocketsphinx"
    asr_model: str | None = None
    sim_backend: str = "resemblyzer"
    sim_model: str | None = None
    device: str = "cpu"


@dataclass
class UttResult:
    utt_id: str
    values: dict = field(default_factory=dict)    # metric -> float
    failures: dict = field(default_factory=dict)  # metric -> reason
    samples_cut: int = 0
    ref_samples: int = 0
    hyp_samples: int = 0
    asr_ref: str | None = None
    asr_hyp: str | None = None


# Per-process state: backends are built once per worker, on first use.
_STATE: dict = {}


def _init_worker(cfg: ScoreConfig) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    _STATE.clear()
    _STATE["cfg"] = cfg


def _backend(kind: str):
    if kind not in _STATE:
        cfg = _STATE["cfg"]
        if kind == "asr":
            from xytok.eval.asr import get_asr_backend

            _STATE[kind] = get_asr_backend(cfg.asr_backend, cfg.asr_model, cfg.device)
        else:
            from xytok.eval.sim import get_sim_backend

            _STATE[kind] = get_sim_backend(cfg.sim_backend, cfg.sim_model, cfg.device)
    return _STATE[kind]


def score_one(job: tuple) -> UttResult:
    """job = (utt_id, ref entry, hyp entry or None). Every failure is recorded, never raised."""
    utt, ref_entry, hyp_entry = job
    cfg: ScoreConfig = _STATE["cfg"]
    res = UttResult(utt)
    wanted = list(cfg.metrics)
    try:
        ref, _ = load_wav(ref_entry)
        res.ref_samples = len(ref)
    except AudioReadError as e:
        res.failures = {m: f"unreadable_reference: {e}" for m in wanted}
        return res
    if "wer" in wanted:  # the reference transcript is needed even when the hyp is missing/broken
        try:
            res.asr_ref = _backend("asr").transcribe(ref)
        except Exception as e:  # noqa: BLE001 - any backend error is a per-utterance failure
            res.failures["wer"] = f"asr_failed_on_reference: {type(e).__name__}: {e}"
    if hyp_entry is None:
        for m in wanted:
            res.failures.setdefault(m, "missing_hypothesis: no entry for this utterance id in HYP")
        return res
    try:
        hyp, _ = load_wav(hyp_entry)
        res.hyp_samples = len(hyp)
    except AudioReadError as e:
        for m in wanted:
            res.failures.setdefault(m, f"unreadable_hypothesis: {e}")
        return res

    signal = [m for m in wanted if m in SIGNAL_METRICS]
    values, failures, res.samples_cut = compute_signal_metrics(ref, hyp, signal)
    res.values.update(values)
    res.failures.update(failures)
    n = min(len(ref), len(hyp))
    if "sim" in wanted:
        try:
            from xytok.eval.sim import speaker_similarity

            res.values["sim"] = speaker_similarity(_backend("sim"), ref[:n], hyp[:n])
        except Exception as e:  # noqa: BLE001
            res.failures["sim"] = f"sim_failed: {type(e).__name__}: {e}"
    if "wer" in wanted and "wer" not in res.failures:
        try:
            res.asr_hyp = _backend("asr").transcribe(hyp)
        except Exception as e:  # noqa: BLE001
            res.failures["wer"] = f"asr_failed_on_hypothesis: {type(e).__name__}: {e}"
    return res


def run_scoring(ref_list: dict, hyp_list: dict, cfg: ScoreConfig, nj: int = 1) -> list[UttResult]:
    """Score every utterance in `ref_list` (hyp missing -> recorded failure), `nj` processes."""
    unknown = set(cfg.metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(ALL_METRICS)}")
    jobs = [(u, ref_list[u], hyp_list.get(u)) for u in sorted(ref_list)]
    extra = sorted(set(hyp_list) - set(ref_list))
    if extra:
        log.warning("%d hypothesis utterances have no reference and are ignored (e.g. %s)", len(extra), extra[0])
    nj = max(1, min(nj, len(jobs)))
    results = []
    progress = ProgressLog(len(jobs), "scored", logger=log).update

    if nj == 1:
        _init_worker(cfg)
        for i, job in enumerate(jobs, 1):
            results.append(score_one(job))
            progress(i)
    else:
        # spawn: fresh interpreters, so no thread pools/backends are inherited half-initialised.
        with mp.get_context("spawn").Pool(nj, initializer=_init_worker, initargs=(cfg,)) as pool:
            for i, r in enumerate(pool.imap_unordered(score_one, jobs, chunksize=1), 1):
                results.append(r)
                progress(i)
    results.sort(key=lambda r: r.utt_id)
    return results
