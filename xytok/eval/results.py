"""RESULTS.md in the paper's table layout, from scoring dirs (summary.json) and probe dirs (probe.json).

Columns: Codec | BPS | Frame rate | WER | SIM | STOI | PESQ-NB | PESQ-WB | WER (recon) | N
- WER = text-alignment probe WER (fraction, as the paper prints it; trained on the recipe's train set,
  measured on its valid set);
- WER (recon) = corpus WER (%) of the ASR on the reconstructions against the reference transcripts;
- ground truth row = the reference audio through the same ASR; signal metrics of ref vs ref are
  trivial and left as "—".
Languages written without spaces (summary.json wer.metric == "cer", probe.json metric == "cer") get
`CER (recon)` / `CER` instead: the header is chosen per test set from its summaries and probes, and a
table mixing both (comparison_table) has both columns.
"""
from __future__ import annotations

import json
import math
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import yaml

COLUMNS = ["Codec", "BPS", "Frame rate", "WER", "SIM", "STOI", "PESQ-NB", "PESQ-WB", "WER (recon)", "N"]
DASH = "—"

# arXiv v1 main table (../shared/notes/paper.md §6.2; WER = probe WER on dev-clean, as fractions).
PAPER_TABLE = [
    # codec, bps, frame rate, WER, SIM, STOI, PESQ-NB, PESQ-WB
    ("DAC-8", "6k", "75", 0.74, 0.88, 0.95, 3.79, 3.46),
    ("SpeechTokenizer", "4k", "50", 0.20, 0.84, 0.92, 3.05, 2.60),
    ("Mimi-32", "4.4k", "12.5", 0.28, 0.93, 0.96, 3.79, 3.42),
    ("DAC-2", "1.5k", "75", 0.98, 0.49, 0.83, 1.91, 1.51),
    ("BigCodec", "1.04k", "80", 0.49, 0.84, 0.93, 3.26, 2.68),
    ("SpeechTokenizer-x1", "1.5k", "50", 0.34, 0.65, 0.88, 2.58, 2.10),
    ("SpeechTokenizer-x2", "1.5k", "50", 0.22, 0.60, 0.86, 2.35, 1.87),
    ("SpeechTokenizer-x3", "1.5k", "50", 0.18, 0.48, 0.83, 1.95, 1.53),
    ("Mimi-8", "1.1k", "12.5", 0.28, 0.73, 0.90, 2.79, 2.24),
    ("Baichuan Audio Tokenizer", "1.075k", "12.5", 0.10, 0.70, 0.88, 2.45, 1.93),
    ("XCodec2.0", "0.8k", "50", 0.30, 0.82, 0.91, 3.03, 2.43),
    ("XY-Tokenizer", "1k", "12.5", 0.13, 0.83, 0.91, 3.00, 2.41),
]
PAPER_SOURCE = ("Gong et al., arXiv 2506.23325 v1 main table (LibriSpeech; WER = probe WER on dev-clean, "
                "SIM/STOI/PESQ on test-clean)")


def codec_info(config_path, num_quantizers: int | None = None) -> dict:
    """Bit rate and frame rate from a released-format config (None when no config is found).

    ``num_quantizers`` = n: the bit rate of decoding from the first n RVQ layers (``nq`` is then n;
    ``model_nq`` is always the model's layer count)."""
    if not config_path or not Path(config_path).is_file():
        return {"bps": None, "frame_rate": None, "nq": num_quantizers, "codebook_size": None, "model_nq": None}
    cfg = yaml.safe_load(Path(config_path).read_text())
    g = cfg.get("generator_params", cfg)
    q = g["quantizer_kwargs"]
    enc = g["semantic_encoder_kwargs"]
    sr = g.get("sample_rate", 16000)
    # mel hop x encoder conv stride x downsample factor
    hop = enc.get("hop_length", 160) * enc.get("stride_size", 2) * g["downsample_kwargs"].get("avg_pooler", 4)
    frame_rate = sr / hop
    model_nq = q["num_quantizers"]
    nq = model_nq if num_quantizers is None else int(num_quantizers)
    if not 1 <= nq <= model_nq:
        raise ValueError(f"{config_path}: {nq} quantizer layers asked for, the model has {model_nq}")
    bps = nq * math.log2(q["codebook_size"]) * frame_rate
    return {"bps": bps, "frame_rate": frame_rate, "nq": nq, "codebook_size": q["codebook_size"], "model_nq": model_nq}


SCORE_DIR_PATTERN = re.compile(r"^score(?:_nq(\d+))?$")


def score_dirs(set_dir) -> list[tuple[Path, int | None]]:
    """[(score dir, n)] under one test set's decode dir: ``score`` (all layers, n=None) and
    ``score_nq<n>`` (decoded from the first n RVQ layers, recipe --decode_num_quantizers), most
    layers first."""
    found = []
    for d in Path(set_dir).glob("score*"):
        m = SCORE_DIR_PATTERN.match(d.name)
        if m and d.is_dir():
            found.append((d, int(m.group(1)) if m.group(1) else None))
    return sorted(found, key=lambda x: -(x[1] or 10 ** 9))


def _fmt_bps(bps):
    if bps is None:
        return "?"
    return f"{bps / 1000:g}k" if bps >= 1000 else f"{bps:g}"


def _f(x, nd=2):
    return DASH if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _metric(summary, m):
    s = summary.get("metrics", {}).get(m)
    return None if s is None else s.get("mean")


def load_json(path):
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def find_probe(exp_dir: Path, name: str = "probe") -> dict | None:
    """Probe results of the model whose decode dir is exp_dir (= <model_exp>/<inference_tag>).

    name="probe_random_init" finds the control run (same probe, randomly initialised codec)."""
    exp_dir = Path(exp_dir)
    for cand in (exp_dir / name / "probe.json", exp_dir.parent / name / "probe.json"):
        if cand.is_file():
            return json.loads(cand.read_text())
    return None


def find_config(exp_dir: Path, probe: dict | None) -> str | None:
    cands = [probe.get("model_config")] if probe else []
    cands += [exp_dir.parent / "export" / "config.yaml", exp_dir.parent / "config.yaml", exp_dir / "config.yaml"]
    for c in cands:
        if c and Path(c).is_file():
            return str(c)
    return None


# Table column -> summary.json metric, for the per-metric N.
COLUMN_METRICS = {"SIM": "sim", "STOI": "stoi", "PESQ-NB": "pesq_nb", "PESQ-WB": "pesq_wb", "DNSMOS": "dnsmos",
                  "UTMOS": "utmos"}
N_NOTE = ("N = utterances scored (the largest count over the metrics); a cell computed on fewer "
          "utterances (some failed) says so as `(N=k)`.")


def column_counts(summary) -> dict:
    """{table column: utterances it was computed on} for SIM/STOI/PESQ and WER (recon)."""
    metrics = summary.get("metrics", {})
    out = {col: metrics[m].get("n_scored", 0) for col, m in COLUMN_METRICS.items() if m in metrics}
    wer = summary.get("wer", {})
    recon = wer.get(wer.get("primary") or "", {})
    if recon:
        out[recon_label(summary)] = recon.get("n_utts", 0)
    return out


def asr_metric(summary) -> str:
    """"wer" or "cer": the ASR error rate of a summary.json (older summaries: wer)."""
    return (summary or {}).get("wer", {}).get("metric", "wer")


def recon_label(summary) -> str:
    """Column of the ASR error rate on reconstructions: `CER (recon)` or `WER (recon)`."""
    return f"{asr_metric(summary).upper()} (recon)"


def probe_metric(probe) -> str:
    """"wer" or "cer": the probe's primary error rate (older probe.json: wer)."""
    return (probe or {}).get("metric", "wer")


def probe_label(probe) -> str:
    """Column of the text-alignment probe: `CER` or `WER`."""
    return probe_metric(probe).upper()


def model_row(name, summary, probe, info) -> dict:
    wer = summary.get("wer", {})
    recon = wer.get(wer.get("primary") or "", {})
    row = {
        "Codec": name, "BPS": _fmt_bps(info["bps"]),
        "Frame rate": DASH if info["frame_rate"] is None else f"{info['frame_rate']:g}",
        probe_label(probe): _f(probe[probe_metric(probe)]) if probe else DASH,
        "SIM": _f(_metric(summary, "sim")), "STOI": _f(_metric(summary, "stoi")),
        "PESQ-NB": _f(_metric(summary, "pesq_nb")), "PESQ-WB": _f(_metric(summary, "pesq_wb")),
        recon_label(summary): f"{100 * recon['rate']:.2f}%" if recon.get("rate") is not None else DASH,
        "DNSMOS": _f(_metric(summary, "dnsmos")), "UTMOS": _f(_metric(summary, "utmos")),
    }
    counts = column_counts(summary)
    n = max(counts.values(), default=0)
    for col, k in counts.items():  # metrics that lost utterances to failures carry their own N
        if k < n and row[col] != DASH:
            row[col] = f"{row[col]} (N={k})"
    row["N"] = str(n)
    return row


def probe_control_row(name, control, info) -> dict:
    """Row of the probe control: only the probe's WER/CER (on a randomly initialised codec) is meaningful."""
    row = {c: DASH for c in COLUMNS}
    row.update({"Codec": f"{name}, random init (probe control)", "BPS": _fmt_bps(info["bps"]),
                "Frame rate": DASH if info["frame_rate"] is None else f"{info['frame_rate']:g}",
                probe_label(control): _f(control[probe_metric(control)]), "N": DASH})
    return row


def ground_truth_row(summary) -> dict | None:
    gt = summary.get("wer", {}).get("ref_vs_text")
    if not gt:
        return None
    row = {c: DASH for c in COLUMNS}
    row.update({"Codec": "ground truth", "BPS": "256k (16-bit PCM)", "Frame rate": DASH,
                recon_label(summary): f"{100 * gt['rate']:.2f}%" if gt.get("rate") is not None else DASH,
                "DNSMOS": _f(_metric(summary, "dnsmos_ref")), "UTMOS": _f(_metric(summary, "utmos_ref")),
                "N": str(gt.get("n_utts", 0))})
    return row


def columns_for(summaries, base=COLUMNS, probes=()) -> list:
    """COLUMNS, plus DNSMOS and UTMOS (before N) when any of the summaries scored them; `WER (recon)` becomes
    `CER (recon)` (and the probe's `WER` becomes `CER`) when the summaries (probes) measured
    characters, and both stand side by side when they are mixed."""
    summaries = list(summaries)
    recon = [c for c in ("WER (recon)", "CER (recon)") if any(recon_label(s) == c for s in summaries)]
    probe = [c for c in ("WER", "CER") if any(p and probe_label(p) == c for p in probes)]
    cols = []
    for c in base:
        if c == "WER (recon)":
            cols += recon or [c]
        elif c == "WER":
            cols += probe or [c]
        else:
            cols.append(c)
    mos = [col for col, m in (("DNSMOS", "dnsmos"), ("UTMOS", "utmos"))
           if any(m in (s or {}).get("metrics", {}) for s in summaries)]
    return cols[:-1] + mos + cols[-1:]


def markdown_table(rows, columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, DASH)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def ci_lines(name, summary) -> list[str]:
    out = []
    for m, s in summary.get("metrics", {}).items():
        if s.get("mean") is None:
            out.append(f"- {name} {m}: no scored utterances ({s.get('n_failed', 0)} failed)")
            continue
        lo, hi = s["ci95"]
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "n/a (N=1)"
        out.append(f"- {name} {m}: {s['mean']:.3f}, 95% CI {ci}, N={s['n_scored']}, failed {s['n_failed']}")
    unit = asr_metric(summary).upper()
    for k, label in (("recon_vs_text", f"{unit} recon vs text"), ("ref_vs_text", f"{unit} ground truth vs text"),
                     ("recon_vs_asr_ref", f"{unit} recon vs ASR(ref)")):
        c = summary.get("wer", {}).get(k)
        if c:
            out.append(f"- {name} {label}: `{c['kaldi']}` ({c['n_utts']} utts)")
    return out


def protocol_lines(summary, probe, test_set, control=None) -> list[str]:
    p = summary.get("protocol", {})
    v = summary.get("versions", {})
    wer = summary.get("wer", {})
    sim = summary.get("sim", {})
    la = summary.get("length_alignment", {})
    lines = [
        f"- Test set: `{test_set}`, {summary.get('n_utts', '?')} reference utterances "
        f"(`{summary.get('inputs', {}).get('ref', '?')}`); failures are excluded from means and counted "
        f"({summary.get('n_utts_with_failure', 0)} utterances with at least one failed metric).",
        f"- Sample rate: {p.get('sample_rate', 16000)} Hz for all metrics; resampling: {p.get('resampling', '?')}.",
        f"- Channels: {p.get('channels', 'mono')} ({summary.get('downmix', {}).get('n_ref_downmixed', 0)} reference, "
        f"{summary.get('downmix', {}).get('n_hyp_downmixed', 0)} reconstructed files downmixed).",
        f"- Length alignment: {p.get('length_alignment', '?')} "
        f"({la.get('n_utts_cut', 0)} utterances cut, max {la.get('max_samples_cut', 0)} samples).",
        f"- PESQ-WB: `{p.get('pesq_wb', '?')}`; PESQ-NB: `{p.get('pesq_nb', '?')}`; pesq {v.get('pesq')}.",
        f"- STOI: `{p.get('stoi', '?')}`; ESTOI: `{p.get('estoi', '?')}`; pystoi {v.get('pystoi')}.",
        f"- SIM: {p.get('sim', 'cosine of speaker embeddings')}, backend `{sim.get('backend', DASH)}` "
        f"(model `{sim.get('model', DASH)}`; resemblyzer {v.get('resemblyzer')}, transformers {v.get('transformers')}).",
    ]
    if "dnsmos" in summary.get("metrics", {}):
        lines.append(f"- DNSMOS: {p.get('dnsmos', '?')}; speechmos {v.get('speechmos')}, onnxruntime "
                     f"{v.get('onnxruntime')}; the ground truth row's DNSMOS is the references' OVRL.")
    if "utmos" in summary.get("metrics", {}):
        lines.append(f"- UTMOS: {p.get('utmos', '?')}; weights `{summary.get('utmos', {}).get('model', DASH)}`, "
                     f"torch {v.get('torch')}; the ground truth row's UTMOS is the references'.")
    if wer:
        lines.append(f"- {recon_label(summary)}: ASR `{wer.get('asr_backend')}` (model `{wer.get('asr_model')}`), "
                     f"language `{wer.get('asr_language', 'en')}`"
                     + (f" ({asr_metric(summary).upper()}: {wer['metric_choice']})" if wer.get("metric_choice") else "")
                     + f", {p.get('wer', 'corpus WER')}; jiwer {v.get('jiwer')}; normaliser "
                     f"{wer.get('normalizer_description', wer.get('normalizer'))}; "
                     f"{wer.get('n_failed', 0)} utterances failed ASR.")
    if probe:
        pc = probe.get("probe_config", {})
        vocab = (f" Character vocabulary: {probe['vocab_size']} characters of the training text "
                 f"(language `{probe.get('language', 'en')}`, normaliser {probe.get('normalizer_name', '?')}); "
                 f"{probe.get('valid_oov_chars', 0)} validation reference characters outside it (counted as errors)."
                 if "vocab_size" in probe else "")
        lines.append(f"- {probe_label(probe)} (probe): {probe.get('features')}; {pc.get('num_layers')}-layer BiLSTM "
                     f"(width {pc.get('hidden')}) + character CTC, {pc.get('epochs')} epochs, lr {pc.get('lr')}, "
                     f"seed {pc.get('seed')}; trained on `{probe.get('train_data')}` ({probe.get('n_train')} utts), "
                     f"{probe_label(probe)} on `{probe.get('valid_data')}` ({probe.get('n_valid')} utts), "
                     f"{probe.get('decoding')}; "
                     f"printed as a fraction like the paper (`{probe[probe_metric(probe) + '_counts']['kaldi']}`)."
                     + vocab)
    else:
        lines.append("- WER (probe): not run yet (recipe stage 10).")
    if probe and control:
        lines.append(f"- Probe control: the same probe on a randomly initialised codec of the same config "
                     f"(`{control['wer_counts']['kaldi']}`, `{control['cer_counts']['kaldi']}`); trained codec: "
                     f"`{probe['wer_counts']['kaldi']}`, `{probe['cer_counts']['kaldi']}`. A codec whose tokens "
                     f"carry text scores lower than its control.")
    lines.append(f"- Confidence intervals: {p.get('ci', '?')}.")
    lines.append(f"- torch {v.get('torch')}, numpy {v.get('numpy')}, scipy {v.get('scipy')}, "
                 f"Python {platform.python_version()}.")
    return lines


def write_results_md(output, entries, title="RESULTS") -> str:
    """entries: list of dicts {name, test_set, summary, probe, info, plots}. Grouped by test set."""
    by_set: dict = {}
    for e in entries:
        by_set.setdefault(e["test_set"], []).append(e)
    out = [f"# {title}", "",
           f"Generated by `python -m xytok.bin.make_results` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
           "Paper layout (Gong et al., arXiv 2506.23325, main table) plus `WER (recon)` (`CER (recon)` for "
           "languages written without spaces) and `N`.", ""]
    for test_set, es in by_set.items():
        rows = [model_row(e["name"], e["summary"], e["probe"], e["info"]) for e in es]
        rows += [probe_control_row(e["name"], e["probe_control"], e["info"]) for e in es if e.get("probe_control")]
        gt = ground_truth_row(es[0]["summary"])
        if gt:
            rows.append(gt)
        cols = columns_for((e["summary"] for e in es), probes=[e.get(k) for e in es for k in ("probe", "probe_control")])
        out += [f"## {test_set}", "", markdown_table(rows, cols), "", legend(cols), "", "### Protocol", ""]
        # the probe (full codes) is on the all-layer entry; rows at fewer layers have none
        with_probe = next((e for e in es if e["probe"]), es[0])
        out += protocol_lines(es[0]["summary"], with_probe["probe"], test_set, with_probe.get("probe_control"))
        out += ["", "### Means with 95% confidence intervals", ""]
        for e in es:
            out += ci_lines(e["name"], e["summary"])
        plots = [p for e in es for p in e.get("plots", [])]
        if plots:
            out += ["", "### Plots", ""] + [f"- `{p}`" for p in plots]
        out.append("")
    text = "\n".join(out)
    Path(output).write_text(text, encoding="utf-8")
    return text


def legend(cols) -> str:
    """The note under a table: what its WER/CER columns measure."""
    parts = [f"{c} = text-alignment probe {c} (fraction)" for c in ("WER", "CER") if c in cols]
    parts += [f"{c} = ASR on reconstructions vs the reference transcripts (%"
              + ("; characters of the normalised text, spaces removed)" if c.startswith("CER") else ")")
              for c in ("WER (recon)", "CER (recon)") if c in cols]
    return ("; ".join(parts) + "; ground truth = reference audio through the same ASR "
            "(its SIM/STOI/PESQ vs itself are trivial: —). " + N_NOTE)


def comparison_table(entries, with_paper=True) -> str:
    """One table: our scored models (any test sets) and the paper's rows alongside (a test set scored
    by CER fills `CER (recon)`, an English one `WER (recon)`)."""
    cols = ["Source"] + columns_for((e["summary"] for e in entries), probes=[e.get("probe") for e in entries])
    if with_paper and "WER" not in cols:  # the paper's probe WER (LibriSpeech)
        cols.insert(cols.index("Frame rate") + 1, "WER")
    rows = []
    for e in entries:
        r = model_row(e["name"], e["summary"], e["probe"], e["info"])
        r["Source"] = f"ours ({e['test_set']})"
        rows.append(r)
        gt = ground_truth_row(e["summary"])
        if gt:
            gt["Source"] = f"ours ({e['test_set']})"
            rows.append(gt)
    if with_paper:
        for codec, bps, fr, wer, sim, stoi, nb, wb in PAPER_TABLE:
            rows.append({"Source": "paper", "Codec": codec, "BPS": bps, "Frame rate": fr, "WER": _f(wer),
                         "SIM": _f(sim), "STOI": _f(stoi), "PESQ-NB": _f(nb), "PESQ-WB": _f(wb),
                         "WER (recon)": DASH, "N": DASH})
    text = markdown_table(rows, cols)
    if entries:
        text += "\n\n" + N_NOTE
    if with_paper:
        text += f"\n\npaper: {PAPER_SOURCE}. Our protocol: see each RESULTS.md / summary.json."
    return text
