"""Score reconstructed audio against references (`xytok score` / `python -m xytok.bin.score`).

Example:
  xytok score --ref data/test/wav.scp --hyp exp/x/decode/test/wav/wav.scp --text data/test/text \\
      --metrics pesq_wb,pesq_nb,stoi,estoi,sim,wer --out exp/x/decode/test/score --nj 4

Writes OUT/utt_scores.tsv, OUT/summary.json, OUT/wer.txt (Kaldi %WER form), OUT/asr_{ref,hyp}.txt.
Multi-channel inputs are downmixed to mono (mean of channels) and counted in summary.json.
--metrics ...,utmos scores the UTMOS22 strong learner on reconstructions (utmos) and references
(utmos_ref); weights from --utmos_model (default: SpeechMOS' release URL, fetched once into the torch
hub cache; offline, pass the downloaded .pt).

Languages: --asr_language xx (ISO code; a region such as zh-CN is dropped) is the language Whisper
transcribes (pocketsphinx and hubert are English-only). The `wer` metric is then a corpus CER for
languages written without spaces (zh, yue, ja, th, lo, my, km, bo; --asr_metric overrides): character
edits / reference characters after normalisation, spaces removed. The default normaliser (auto) is
basic_english for English and basic_multilingual otherwise (full-width forms folded, CJK punctuation
removed, Han/kana characters one token each, numbers not converted). summary.json states the
language, the metric and the normaliser.

  xytok score --ref data/test/wav.scp --hyp DIR/wav.scp --text data/test/text --out OUT \\
      --asr_backend whisper --asr_language zh       # -> %CER, normaliser basic_multilingual

Exit status: 0 when every metric scored at least one utterance (per-utterance failures are recorded
in summary.json); 2 for bad arguments or an ASR/SIM/UTMOS model that cannot be built (checked before any
scoring, the message names the metric, backend and model); 1 when a metric scored no utterance at
all (the outputs are still written; the message gives the most common failure reason).
"""
from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_METRICS = "pesq_wb,pesq_nb,stoi,estoi,sim,wer"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xytok score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="reference wav.scp, or a directory (wav.scp inside, or *.wav)")
    p.add_argument("--hyp", required=True, help="reconstruction wav.scp or directory, matched by utterance id")
    p.add_argument("--text", default=None, help="Kaldi text of the references: adds transcript-based WER rows")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help="comma-separated subset of pesq_wb,pesq_nb,stoi,estoi,sim,wer,dnsmos,utmos "
                        f"(default {DEFAULT_METRICS})")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--nj", type=int, default=1, help="parallel processes (one thread each)")
    p.add_argument("--asr_backend", default="pocketsphinx", choices=["pocketsphinx", "whisper", "hubert"])
    p.add_argument("--asr_model", default=None,
                   help="HF model id or local dir (defaults: whisper openai/whisper-large-v3, "
                        "hubert facebook/hubert-large-ls960-ft)")
    p.add_argument("--sim_backend", default="resemblyzer", choices=["resemblyzer", "wavlm", "wavlm_tdnn"])
    p.add_argument("--sim_model", default=None,
                   help="wavlm: HF id or local dir (default microsoft/wavlm-base-plus-sv); "
                        "wavlm_tdnn: local UniSpeech wavlm_large_finetune.pth (required)")
    p.add_argument("--asr_language", default="en",
                   help="language of the speech (ISO code, e.g. en, zh, ja, de; zh-CN -> zh): Whisper transcribes "
                        "in it (never translates); pocketsphinx/hubert accept only en (default en)")
    p.add_argument("--asr_metric", default="auto", choices=["auto", "wer", "cer"],
                   help="error rate of the wer metric: auto = CER for languages written without spaces "
                        "(zh, yue, ja, th, lo, my, km, bo), WER otherwise (default auto)")
    p.add_argument("--normalizer", default="auto",
                   choices=["auto", "basic_english", "basic_multilingual", "whisper_english",
                            "whisper_english_nospelling", "none"],
                   help="text normaliser applied to references and hypotheses alike (see xytok.eval.normalizer); "
                        "auto = basic_english for --asr_language en, basic_multilingual otherwise")
    p.add_argument("--normalizer_spelling_map", default=None,
                   help="whisper_english: JSON file of Whisper's British->American spelling map (english.json of "
                        "openai-whisper, normalizer.json of the openai/whisper-* checkpoints); default: found "
                        "in the openai-whisper package or fetched from openai/whisper-large-v3")
    p.add_argument("--utmos_model", default=None,
                   help="utmos: UTMOS22 strong weights, a local .pt (SpeechMOS utmos22_strong_step7459_v1.pt layout), "
                        "an http(s) URL (downloaded once into the torch hub cache) or utmos22_strong (default: "
                        "the SpeechMOS v1.0.0 release URL)")
    p.add_argument("--utmos_batch_seconds", type=float, default=60.0,
                   help="utmos: padded audio per batch (utterances of similar length batched, padding masked)")
    p.add_argument("--device", default="cpu", help="torch device for ASR/SIM/UTMOS models (cpu, cuda, cuda:0)")
    p.add_argument("--align_max_lag_ms", type=float, default=0.0,
                   help="shift each reconstruction by its cross-correlation lag within ±this many ms before "
                        "PESQ/STOI (codecs that delay their output; the lag is recorded); 0 = truncation only")
    p.add_argument("--max_utts", type=int, default=None, help="score only the first N reference utterances")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from xytok.eval.inputs import read_text, resolve_audio_list
    from xytok.eval.normalizer import get_normalizer
    from xytok.eval.scoring import ALL_METRICS, BackendError, ScoreConfig, run_scoring
    from xytok.eval.summary import unscored_metrics, write_outputs

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    bad = [m for m in metrics if m not in ALL_METRICS]
    if bad or not metrics:
        print(f"xytok score: unknown metric(s) {bad}; choose from {','.join(ALL_METRICS)}", file=sys.stderr)
        return 2
    ref_list = resolve_audio_list(args.ref)
    hyp_list = resolve_audio_list(args.hyp)
    if args.max_utts:
        ref_list = dict(sorted(ref_list.items())[: args.max_utts])
    texts = read_text(args.text) if args.text else None
    try:
        normalizer = get_normalizer(args.normalizer, spelling_map=args.normalizer_spelling_map,
                                    language=args.asr_language)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"xytok score: normalizer {args.normalizer!r}: {e}", file=sys.stderr)
        return 2
    cfg = ScoreConfig(metrics=metrics, asr_backend=args.asr_backend, asr_model=args.asr_model,
                      sim_backend=args.sim_backend, sim_model=args.sim_model, device=args.device,
                      utmos_model=args.utmos_model, utmos_batch_seconds=args.utmos_batch_seconds,
                      max_lag_ms=args.align_max_lag_ms, asr_language=args.asr_language, asr_metric=args.asr_metric)
    logging.getLogger("xytok.score").info("scoring %d references against %s (%d entries), metrics %s, nj=%d",
                                          len(ref_list), args.hyp, len(hyp_list), ",".join(metrics), args.nj)
    try:
        results = run_scoring(ref_list, hyp_list, cfg, nj=args.nj)
    except BackendError as e:
        print(f"xytok score: {e}", file=sys.stderr)
        return 2
    summary = write_outputs(args.out, results, metrics, cfg, normalizer, texts,
                            inputs={"ref": args.ref, "hyp": args.hyp, "text": args.text,
                                    "n_ref": len(ref_list), "n_hyp": len(hyp_list)})
    for m, s in summary["metrics"].items():
        mean = "n/a" if s["mean"] is None else f"{s['mean']:.4f}"
        print(f"{m:8s} mean {mean}  (N={s['n_scored']}, failed {s['n_failed']})")
    if "wer" in summary:
        w = summary["wer"]
        print(f"{w['metric'].upper()} ({w['metric_choice']}); ASR {w['asr_backend']}, language {w['asr_language']}; "
              f"normaliser {w['normalizer']}")
        for k in ("recon_vs_text", "ref_vs_text", "recon_vs_asr_ref"):
            if k in summary["wer"]:
                print(f"{k:17s} {summary['wer'][k]['kaldi']}")
    print(f"wrote {args.out}/utt_scores.tsv, summary.json" + (", wer.txt" if "wer" in metrics else ""))
    unscored = unscored_metrics(summary)
    for msg in unscored.values():
        print(f"xytok score: ERROR: {msg}", file=sys.stderr)
    return 1 if unscored else 0


if __name__ == "__main__":
    sys.exit(main())
