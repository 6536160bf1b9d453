"""Diagnostic plots for a scoring dir: per-metric histograms and one spectrogram comparison."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    return plt


def read_utt_scores(path) -> dict[str, dict[str, float]]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            utt = row.pop("utt_id")
            out[utt] = {k: float(v) for k, v in row.items() if v not in ("", None) and math.isfinite(float(v))}
    return out


def metric_histograms(score_dir, out_dir, title="") -> list[str]:
    plt = _pyplot()
    scores = read_utt_scores(Path(score_dir) / "utt_scores.tsv")
    metrics = sorted({m for s in scores.values() for m in s})
    written = []
    for m in metrics:
        vals = np.array([s[m] for s in scores.values() if m in s])
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(vals, bins=min(30, max(5, len(vals) // 2)), color="tab:blue", alpha=0.8)
        ax.axvline(vals.mean(), color="k", ls="--", label=f"mean {vals.mean():.3f} (N={len(vals)})")
        ax.set_xlabel(m)
        ax.set_ylabel("utterances")
        ax.set_title(f"{title} {m}".strip())
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = Path(out_dir) / f"hist_{m}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(str(p))
    return written


def spectrogram_comparison(ref: np.ndarray, hyp: np.ndarray, out_path, utt_id="", sr=16000) -> str:
    """Log-magnitude STFT (25 ms / 10 ms) of reference and reconstruction, one above the other."""
    from scipy.signal import stft

    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, (name, x) in zip(axes, (("reference", ref), ("reconstruction", hyp))):
        f, t, z = stft(x, fs=sr, nperseg=400, noverlap=240)
        ax.pcolormesh(t, f / 1000, 20 * np.log10(np.abs(z) + 1e-8), shading="auto", vmin=-100, vmax=-10)
        ax.set_ylabel("kHz")
        ax.set_title(f"{name} {utt_id}".strip(), fontsize=9)
    axes[-1].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return str(out_path)


def plots_for_score_dir(score_dir, ref_list: dict, hyp_list: dict, out_dir, title="") -> list[str]:
    """Histograms of every metric + the spectrogram of the first utterance that has both sides."""
    from xytok.eval.inputs import AudioReadError, load_wav

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = metric_histograms(score_dir, out, title)
    for utt in sorted(set(ref_list) & set(hyp_list)):
        try:
            ref, _ = load_wav(ref_list[utt])
            hyp, _ = load_wav(hyp_list[utt])
        except AudioReadError:
            continue
        written.append(spectrogram_comparison(ref, hyp, out / f"spec_{utt}.png", utt))
        break
    return written
