"""Score reconstructions against references: signal metrics, SIM and ASR transcripts per utterance
(parallel over processes), then corpus WER and summary statistics.

The ASR/SIM backends are built once per process before any utterance is scored; one that cannot be
built (bad model id/path, missing package, offline without a cache) raises `BackendError` naming the
metric, backend and model, instead of becoming one failure per utterance.

Each worker process runs with one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)): the metric
libraries and resemblyzer oversubscribe the CPU otherwise; parallelism comes from `nj` processes.
"""
from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass, field

from xytok.eval.inputs import SAMPLE_RATE, AudioReadError, load_wav_info
from xytok.eval.metrics import SIGNAL_METRICS, compute_signal_metrics
from xytok.eval.mos import output_columns
from xytok.progress import ProgressLog

ALL_METRICS = SIGNAL_METRICS + ("sim", "wer", "dnsmos", "utmos")
log = logging.getLogger("xytok.score")


@dataclass
class ScoreConfig:
    metrics: tuple = ("pesq_wb", "pesq_nb", "stoi", "estoi", "sim", "wer")
    asr_backend: str = "pocketsphinx"
    asr_model: str | None = None
    sim_backend: str = "resemblyzer"
    sim_model: str | None = None
    device: str = "cpu"
    # > 0: shift the reconstruction by the cross-correlation lag within ±max_lag_ms before the
    # signal metrics (xytok.eval.align; codecs that delay their output); 0: truncation only
    max_lag_ms: float = 0.0
    # language the ASR transcribes (ISO code, region dropped) and the error rate reported for it:
    # "auto" = CER for languages written without spaces (xytok.eval.wer.CER_LANGUAGES), else WER
    asr_language: str = "en"
    asr_metric: str = "auto"
    # UTMOS22 strong weights: local .pt, URL or xytok.eval.utmos.MODEL_IDS name (None: the released URL);
    # scored in the parent process after the per-utterance pass, batches of <= utmos_batch_seconds padded audio
    utmos_model: str | None = None
    utmos_batch_seconds: float = 60.0


@dataclass
class UttResult:
    utt_id: str
    values: dict = field(default_factory=dict)    # metric -> float
    failures: dict = field(default_factory=dict)  # metric -> reason
    samples_cut: int = 0
    lag_samples: int = 0  # cross-correlation shift applied to the hypothesis (ScoreConfig.max_lag_ms)
    ref_samples: int = 0
    hyp_samples: int = 0
    asr_ref: str | None = None
    asr_hyp: str | None = None
    ref_downmixed: bool = False  # multi-channel input averaged to mono
    hyp_downmixed: bool = False
    ref_sample_rate: int = 0  # rate of the file as read (scored at 16 kHz: other rates are resampled)
    hyp_sample_rate: int = 0


class BackendError(RuntimeError):
    """An ASR/SIM backend could not be built; the message names the metric, backend and model."""


def build_backends(cfg: ScoreConfig) -> dict:
    """{"asr": ..., "sim": ...} for the model-based metrics in cfg.metrics; BackendError if one fails."""
    from functools import partial

    from xytok.eval import asr, sim

    asr_factory = partial(asr.get_asr_backend, language=getattr(cfg, "asr_language", "en"))
    wanted = [("wer", "asr", cfg.asr_backend, cfg.asr_model, asr_factory, asr.DEFAULT_MODELS),
              ("sim", "sim", cfg.sim_backend, cfg.sim_model, sim.get_sim_backend, sim.DEFAULT_MODELS)]
    out = {}
    for metric, kind, name, model, factory, defaults in wanted:
        if metric not in cfg.metrics:
            continue
        try:
            out[kind] = factory(name, model, cfg.device)
        except Exception as e:  # noqa: BLE001 - whatever the library raises, say which model failed
            raise BackendError(f"metric {metric}: cannot build the {kind.upper()} backend {name!r} with model "
                               f"{model or defaults.get(name, '?')!r}: {type(e).__name__}: {e}") from e
    if "dnsmos" in cfg.metrics:
        from xytok.eval.mos import DnsmosScorer

        try:
            out["dnsmos"] = DnsmosScorer()
        except Exception as e:  # noqa: BLE001 - missing speechmos/onnxruntime or model files
            raise BackendError(f"metric dnsmos: cannot build the DNSMOS backend (speechmos' bundled ONNX models): "
                               f"{type(e).__name__}: {e}") from e
    return out


def build_utmos(cfg: ScoreConfig):
    """The UTMOS scorer (xytok.eval.utmos); BackendError naming the model when it cannot be built."""
    from xytok.eval.utmos import UtmosScorer, resolve_model

    try:
        return UtmosScorer(cfg.utmos_model, cfg.device)
    except Exception as e:  # noqa: BLE001 - missing file, offline download, wrong layout, bad device
        raise BackendError(f"metric utmos: cannot build the UTMOS backend (UTMOS22 strong) with model "
                           f"{resolve_model(cfg.utmos_model)!r}: {type(e).__name__}: {e}") from e


# Per-process state: the config, and the backends built once per process before scoring.
_STATE: dict = {}


def _init_worker(cfg: ScoreConfig, backends: dict | None = None) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    _STATE.clear()
    _STATE["cfg"] = cfg
    if backends is not None:
        _STATE["backends"] = backends
        return
    try:
        _STATE["backends"] = build_backends(cfg)
    except BackendError as e:
        # Raising in a Pool initializer makes the pool respawn workers forever; keep the error and
        # raise it from the first job instead, which ends the run in the parent.
        _STATE["init_error"] = e


def _backend(kind: str):
    return _STATE["backends"][kind]


def score_one(job: tuple) -> UttResult:
    """job = (utt_id, ref entry, hyp entry or None). Every per-utterance failure is recorded, never
    raised; only a backend this process could not build raises (BackendError)."""
    if "init_error" in _STATE:
        raise _STATE["init_error"]
    utt, ref_entry, hyp_entry = job
    cfg: ScoreConfig = _STATE["cfg"]
    res = UttResult(utt)
    wanted = output_columns(cfg.metrics)  # dnsmos failures are recorded under each of its keys
    try:
        ref, info = load_wav_info(ref_entry, utt=utt)
        res.ref_samples, res.ref_downmixed = len(ref), info.downmixed
        res.ref_sample_rate = info.orig_sample_rate
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
        hyp, info = load_wav_info(hyp_entry, utt=utt)
        res.hyp_samples, res.hyp_downmixed = len(hyp), info.downmixed
        res.hyp_sample_rate = info.orig_sample_rate
    except AudioReadError as e:
        for m in wanted:
            res.failures.setdefault(m, f"unreadable_hypothesis: {e}")
        return res

    signal = [m for m in wanted if m in SIGNAL_METRICS]
    ref_s, hyp_s, pre_cut = ref, hyp, 0
    if cfg.max_lag_ms > 0 and signal:
        from xytok.eval.align import align_by_xcorr

        ref_s, hyp_s, res.lag_samples, pre_cut = align_by_xcorr(ref, hyp, int(cfg.max_lag_ms * SAMPLE_RATE / 1000))
    values, failures, res.samples_cut = compute_signal_metrics(ref_s, hyp_s, signal)
    res.samples_cut += pre_cut
    res.values.update(values)
    res.failures.update(failures)
    n = min(len(ref), len(hyp))
    if "sim" in wanted:
        try:
            from xytok.eval.sim import speaker_similarity

            res.values["sim"] = speaker_similarity(_backend("sim"), ref[:n], hyp[:n])
        except Exception as e:  # noqa: BLE001
            res.failures["sim"] = f"sim_failed: {type(e).__name__}: {e}"
    if "dnsmos" in wanted:  # reference-free: each side scored on its full length
        from xytok.eval.mos import dnsmos_values

        values, failures = dnsmos_values(_backend("dnsmos"), ref, hyp)
        res.values.update(values)
        res.failures.update(failures)
    if "wer" in wanted and "wer" not in res.failures:
        try:
            res.asr_hyp = _backend("asr").transcribe(hyp)
        except Exception as e:  # noqa: BLE001
            res.failures["wer"] = f"asr_failed_on_hypothesis: {type(e).__name__}: {e}"
    return res


def resampled_counts(results) -> dict:
    """{"reference"|"reconstruction": {rate: n files}} for files not at 16 kHz (resampled to 16 kHz
    for every metric, xytok.audio.resample)."""
    out = {}
    for side, attr in (("reference", "ref_sample_rate"), ("reconstruction", "hyp_sample_rate")):
        counts = Counter(getattr(r, attr) for r in results)
        out[side] = {rate: n for rate, n in sorted(counts.items()) if rate and rate != SAMPLE_RATE}
    return out


def log_resampling(results) -> None:
    for side, counts in resampled_counts(results).items():
        for rate, n in counts.items():
            log.info("%d %s file(s) at %d Hz resampled to %d Hz for the metrics (polyphase, exact ratio)",
                     n, side, rate, SAMPLE_RATE)


def run_scoring(ref_list: dict, hyp_list: dict, cfg: ScoreConfig, nj: int = 1) -> list[UttResult]:
    """Score every utterance in `ref_list` (hyp missing -> recorded failure), `nj` processes.

    Raises BackendError before scoring anything when an ASR/SIM/UTMOS backend cannot be built."""
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

    # Build the backends here first: a model that cannot load fails the run now, with its name,
    # not once per utterance (nor once per worker).
    backends = build_backends(cfg)
    utmos = build_utmos(cfg) if "utmos" in cfg.metrics else None  # one model, in this process only
    if nj == 1:
        _init_worker(cfg, backends)
        for i, job in enumerate(jobs, 1):
            results.append(score_one(job))
            progress(i)
    else:
        # The workers build their own copies (once each); free the parent's check copy first.
        del backends
        gc.collect()
        if cfg.device.startswith("cuda"):  # hand the check copy's GPU memory back to the workers
            import torch

            torch.cuda.empty_cache()
        # spawn: fresh interpreters, so no thread pools/backends are inherited half-initialised.
        with mp.get_context("spawn").Pool(nj, initializer=_init_worker, initargs=(cfg,)) as pool:
            for i, r in enumerate(pool.imap_unordered(score_one, jobs, chunksize=1), 1):
                results.append(r)
                progress(i)
    results.sort(key=lambda r: r.utt_id)
    log_resampling(results)
    if utmos is not None:
        from xytok.eval.utmos import add_to_results

        add_to_results(utmos, results, ref_list, hyp_list, cfg.utmos_batch_seconds, logger=log, num_threads=nj)
    return results
