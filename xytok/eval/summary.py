"""Turn per-utterance results into utt_scores.tsv, summary.json, wer.txt and ASR transcripts."""
from __future__ import annotations

import json
import math
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from xytok.eval.metrics import SAMPLE_RATE
from xytok.eval.mos import PROTOCOL as MOS_PROTOCOL, output_columns
from xytok.eval.stats import CI_METHOD, mean_ci
from xytok.eval.wer import CER_DEFINITION, CER_LANGUAGES, WER_DEFINITION, corpus_error_counts, resolve_asr_metric

PROTOCOL = {
    "sample_rate": SAMPLE_RATE,
    "resampling": "only inputs not at 16 kHz: scipy.signal.resample_poly with the exact rate ratio",
    "channels": "multi-channel inputs downmixed to mono (mean of the channels), counted in summary['downmix']",
    "length_alignment": "both signals truncated to the shorter one before PESQ/STOI/SIM; samples cut recorded",
    "pesq_wb": "pesq.pesq(16000, ref, deg, 'wb')  (ITU-T P.862.2 MOS-LQO)",
    "pesq_nb": "pesq.pesq(16000, ref, deg, 'nb')  (P.862 narrow-band mode applied to the 16 kHz signals)",
    "stoi": "pystoi.stoi(ref, deg, 16000, extended=False)",
    "estoi": "pystoi.stoi(ref, deg, 16000, extended=True)",
    "sim": "cosine similarity of speaker embeddings of ref and hyp",
    "wer": WER_DEFINITION,  # CER_DEFINITION for a run scored by CER (write_outputs)
    "dnsmos": MOS_PROTOCOL,
    "failures": "recorded per utterance and excluded from means (never counted as 0, 1 or -7)",
    "ci": CI_METHOD,
}
VERSIONED = ("pesq", "pystoi", "resemblyzer", "jiwer", "torch", "transformers", "pocketsphinx", "numpy", "scipy",
             "speechmos", "onnxruntime")


def library_versions() -> dict:
    out = {}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.6g}"


def wer_blocks(results, texts: dict | None, normalizer, unit: str = "word") -> dict:
    """Corpus WER (unit="word") or CER (unit="char") comparisons. Only utterances whose needed
    transcripts exist are counted."""
    ok = [r for r in results if "wer" not in r.failures and r.asr_ref is not None and r.asr_hyp is not None]
    blocks = {"recon_vs_asr_ref": corpus_error_counts({r.utt_id: r.asr_ref for r in ok},
                                                      {r.utt_id: r.asr_hyp for r in ok}, normalizer, unit)}
    if texts is not None:
        have_text = [r for r in ok if r.utt_id in texts]
        blocks["recon_vs_text"] = corpus_error_counts({r.utt_id: texts[r.utt_id] for r in have_text},
                                                      {r.utt_id: r.asr_hyp for r in have_text}, normalizer, unit)
        # Ground truth: reference audio through the same ASR, over the same utterances.
        blocks["ref_vs_text"] = corpus_error_counts({r.utt_id: texts[r.utt_id] for r in have_text},
                                                    {r.utt_id: r.asr_ref for r in have_text}, normalizer, unit)
    return blocks


def asr_metric_choice(cfg) -> tuple[str, str]:
    """("wer"|"cer", why): the ASR error rate of this run and how it was chosen (stated in summary.json)."""
    language = getattr(cfg, "asr_language", "en")
    asked = getattr(cfg, "asr_metric", "auto")
    metric = resolve_asr_metric(asked, language)
    if asked != "auto":
        return metric, f"--asr_metric {asked}"
    spaced = "written without spaces between words" if metric == "cer" else "space-delimited"
    return metric, (f"auto: language {language!r} is {spaced} (CER languages: {', '.join(sorted(CER_LANGUAGES))})")


def primary_wer_key(blocks: dict) -> str:
    return "recon_vs_text" if "recon_vs_text" in blocks else "recon_vs_asr_ref"


def unscored_metrics(summary: dict) -> dict:
    """{metric: message} for every metric that scored no utterance at all, with its most common
    failure reason (the tag before the first ':') and one full example."""
    out = {}
    per_metric = {m: (s["n_scored"], s["failures"]) for m, s in summary["metrics"].items()}
    if "wer" in summary:
        w = summary["wer"]
        per_metric["wer"] = (w.get(w.get("primary") or "", {}).get("n_utts", 0), w["failures"])
    for m, (n, failures) in per_metric.items():
        if n:
            continue
        if not failures:
            why = "no reference utterance, or none with a transcript in --text" if m == "wer" else "no reference utterance"
            out[m] = f"{m}: scored 0 utterances ({why})"
            continue
        tags = Counter(reason.split(":", 1)[0] for reason in failures.values())
        tag, count = tags.most_common(1)[0]
        utt, example = next((u, r) for u, r in failures.items() if r.split(":", 1)[0] == tag)
        out[m] = (f"{m}: scored 0 of {len(failures)} utterances; most common failure {tag!r} ({count}x), "
                  f"e.g. {utt}: {example}")
    return out


def write_outputs(out_dir, results, metrics, cfg, normalizer, texts=None, inputs: dict | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = output_columns(metrics)  # dnsmos -> its OVRL/SIG/BAK/P.808/reference keys
    # "wer" = the ASR metric; it is a CER for languages written without spaces (asr_metric_choice)
    asr_metric, asr_metric_why = asr_metric_choice(cfg)
    unit = "char" if asr_metric == "cer" else "word"
    blocks = wer_blocks(results, texts, normalizer, unit) if "wer" in metrics else {}
    primary = primary_wer_key(blocks) if blocks else None

    # Per-utterance table: empty cell = failed (reason in summary.json).
    with open(out / "utt_scores.tsv", "w", encoding="utf-8") as f:
        f.write("\t".join(["utt_id"] + [asr_metric if m == "wer" else m for m in metrics]) + "\n")
        for r in results:
            row = [r.utt_id]
            for m in metrics:
                if m == "wer":
                    errs, n = blocks[primary].per_utt.get(r.utt_id, (None, 0))
                    row.append(_fmt(errs / n) if errs is not None and n else "")
                else:
                    row.append(_fmt(r.values.get(m)))
            f.write("\t".join(row) + "\n")

    summary = {"inputs": inputs or {}, "n_utts": len(results), "metrics": {}, "protocol": PROTOCOL,
               "versions": library_versions()}
    for m in metrics:
        if m == "wer":
            continue
        stats = mean_ci(r.values[m] for r in results if m in r.values)
        failed = {r.utt_id: r.failures[m] for r in results if m in r.failures}
        summary["metrics"][m] = {**stats, "n_scored": stats.pop("n"), "n_failed": len(failed), "failures": failed}
    if "sim" in metrics:
        from xytok.eval.sim import DEFAULT_MODELS

        summary["sim"] = {"backend": cfg.sim_backend, "model": cfg.sim_model or DEFAULT_MODELS[cfg.sim_backend]}
    if "utmos" in metrics:
        from xytok.eval.utmos import PROTOCOL as UTMOS_PROTOCOL, resolve_model

        summary["protocol"] = {**summary["protocol"], "utmos": UTMOS_PROTOCOL}
        summary["utmos"] = {"model": resolve_model(getattr(cfg, "utmos_model", None)),
                            "batch_seconds": getattr(cfg, "utmos_batch_seconds", None)}
    if "wer" in metrics:
        from xytok.eval.asr import DEFAULT_MODELS as ASR_DEFAULTS

        wer_failed = {r.utt_id: r.failures["wer"] for r in results if "wer" in r.failures}
        summary["wer"] = {
            "primary": primary,
            "metric": asr_metric,  # "wer" or "cer": what every count block below measures
            "unit": unit,
            "metric_choice": asr_metric_why,
            "asr_language": getattr(cfg, "asr_language", "en"),
            "asr_backend": cfg.asr_backend,
            "asr_model": cfg.asr_model or ASR_DEFAULTS[cfg.asr_backend],
            "normalizer": normalizer.name,
            "normalizer_description": normalizer.description,
            "n_failed": len(wer_failed),
            "failures": wer_failed,
            **{k: {**c.to_dict(), "kaldi": c.kaldi_line(asr_metric.upper())} for k, c in blocks.items()},
        }
        summary["protocol"] = {**summary["protocol"], "asr_language": summary["wer"]["asr_language"]}
        if asr_metric == "cer":
            summary["protocol"]["wer"] = CER_DEFINITION
        labels = {"recon_vs_text": "reconstruction: ASR(hyp) vs text",
                  "ref_vs_text": "ground truth: ASR(ref) vs text",
                  "recon_vs_asr_ref": "reconstruction: ASR(hyp) vs ASR(ref)"}
        with open(out / "wer.txt", "w", encoding="utf-8") as f:
            f.write(f"# ASR {summary['wer']['asr_backend']} ({summary['wer']['asr_model']}), language "
                    f"{summary['wer']['asr_language']}; {asr_metric.upper()} ({asr_metric_why}); "
                    f"normaliser {normalizer.name}; {len(wer_failed)} utterances failed\n")
            for k, c in blocks.items():
                f.write(f"{c.kaldi_line(asr_metric.upper())}  # {labels[k]}, {c.n_utts} utts\n")
        for side in ("ref", "hyp"):
            with open(out / f"asr_{side}.txt", "w", encoding="utf-8") as f:
                for r in results:
                    t = getattr(r, f"asr_{side}")
                    if t is not None:
                        f.write(f"{r.utt_id} {t}".rstrip() + "\n")  # Kaldi text: no trailing space
    cut = [r.samples_cut for r in results if r.hyp_samples]
    lags = [r.lag_samples for r in results if r.hyp_samples]
    summary["length_alignment"] = {
        "method": (f"shift the reconstruction by the cross-correlation lag within ±{cfg.max_lag_ms:g} ms, "
                   "then truncate both to the shorter signal" if getattr(cfg, "max_lag_ms", 0) > 0
                   else "truncate both to the shorter signal"),
        "max_lag_ms": getattr(cfg, "max_lag_ms", 0.0),
        "n_utts_shifted": sum(lag != 0 for lag in lags),
        "max_abs_lag_samples": int(max((abs(lag) for lag in lags), default=0)),
        "mean_lag_samples": float(sum(lags) / len(lags)) if lags else 0.0,
        "lag_samples_by_utt": {r.utt_id: r.lag_samples for r in results if r.lag_samples},
        "n_utts_cut": sum(c > 0 for c in cut),
        "total_samples_cut": int(sum(cut)),
        "max_samples_cut": int(max(cut, default=0)),
        "mean_samples_cut": float(sum(cut) / len(cut)) if cut else 0.0,
    }
    if getattr(cfg, "max_lag_ms", 0) > 0:  # the protocol line states the alignment actually used
        summary["protocol"] = {**summary["protocol"], "length_alignment": (
            f"reconstruction shifted by its cross-correlation lag within ±{cfg.max_lag_ms:g} ms (lags recorded), "
            "then both signals truncated to the shorter one before PESQ/STOI; samples cut recorded")}
    summary["downmix"] = {
        "method": "mean of the channels",
        "n_ref_downmixed": sum(r.ref_downmixed for r in results),
        "n_hyp_downmixed": sum(r.hyp_downmixed for r in results),
    }
    from xytok.eval.scoring import resampled_counts

    summary["resampling"] = {  # e.g. a 24 kHz decoder's wavs, scored at 16 kHz
        "scored_at_hz": SAMPLE_RATE,
        "method": "scipy.signal.resample_poly with the exact rate ratio (xytok.audio.resample)",
        "resampled_files_by_rate": {side: {str(k): v for k, v in c.items()}
                                    for side, c in resampled_counts(results).items()},
    }
    summary["failures_by_utt"] = {r.utt_id: r.failures for r in results if r.failures}
    summary["n_utts_with_failure"] = len(summary["failures_by_utt"])
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, sort_keys=False)
    return summary
