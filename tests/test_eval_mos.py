"""DNSMOS (speechmos' bundled ONNX models, offline) through xytok score, summary.json and RESULTS.md."""
import json

import numpy as np
import pytest
import soundfile as sf

from xytok.bin.score import main as score_main
from xytok.eval.mos import DNSMOS_KEYS, DnsmosScorer, MosError
from xytok.eval.results import COLUMNS, columns_for, markdown_table, model_row, write_results_md

SR = 16000


def harmonic(seconds=2.0, f0=140.0):
    """Voiced-speech-like test signal: a harmonic series with a slow pitch and amplitude contour."""
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return 0.5 * x / np.abs(x).max()


def noisy(x, seed=0):
    return np.clip(x + 0.3 * np.random.default_rng(seed).standard_normal(len(x)), -1, 1)


@pytest.fixture(scope="module")
def scorer():
    return DnsmosScorer()


def test_heavy_noise_lowers_dnsmos(scorer):
    clean, dirty = scorer.score(harmonic()), scorer.score(noisy(harmonic()))
    assert all(1.0 <= v <= 5.0 for v in (*clean.values(), *dirty.values())), (clean, dirty)
    assert dirty["bak"] < clean["bak"] - 1.0, (clean, dirty)  # measured 3.3 vs 1.4
    assert dirty["ovrl"] < clean["ovrl"], (clean, dirty)


def test_unusable_input_is_an_error_not_a_score(scorer):
    with pytest.raises(MosError, match="silent"):
        scorer.score(np.zeros(SR))
    with pytest.raises(MosError, match="shorter"):
        scorer.score(harmonic(0.05))
    with pytest.raises(MosError, match="NaN"):
        scorer.score(np.full(SR, np.nan))


def test_score_cli_summary_tsv_and_results_column(tmp_path):
    ref_dir, hyp_dir = tmp_path / "ref", tmp_path / "hyp"
    ref_dir.mkdir(), hyp_dir.mkdir()
    x = harmonic()
    for u, hyp in (("clean", x), ("noisy", noisy(x)), ("silent", np.zeros_like(x))):
        sf.write(ref_dir / f"{u}.wav", x, SR, subtype="FLOAT")
        sf.write(hyp_dir / f"{u}.wav", hyp, SR, subtype="FLOAT")
    out = tmp_path / "score"
    # a silent reconstruction fails its DNSMOS keys (recorded), the others score: exit 0
    assert score_main(["--ref", str(ref_dir), "--hyp", str(hyp_dir), "--metrics", "dnsmos", "--out", str(out)]) == 0
    rows = [ln.split("\t") for ln in (out / "utt_scores.tsv").read_text().splitlines()]
    assert rows[0] == ["utt_id", *DNSMOS_KEYS]
    tsv = {r[0]: dict(zip(rows[0][1:], r[1:])) for r in rows[1:]}
    assert float(tsv["noisy"]["dnsmos_bak"]) < float(tsv["clean"]["dnsmos_bak"])
    assert tsv["silent"]["dnsmos"] == "" and tsv["silent"]["dnsmos_ref"] != ""  # ref side still scored
    assert tsv["clean"]["dnsmos_ref"] == tsv["noisy"]["dnsmos_ref"]  # same reference audio
    summary = json.loads((out / "summary.json").read_text())
    d = summary["metrics"]["dnsmos"]
    assert d["n_scored"] == 2 and d["n_failed"] == 1 and "silent" in d["failures"]["silent"]
    assert summary["metrics"]["dnsmos_ref"]["n_scored"] == 3
    assert "speechmos" in summary["protocol"]["dnsmos"] and summary["versions"]["speechmos"]

    cols = columns_for([summary])
    assert cols == COLUMNS[:-1] + ["DNSMOS", "N"] and columns_for([{"metrics": {"stoi": {}}}]) == COLUMNS
    info = {"bps": 1000, "frame_rate": 12.5}
    row = model_row("codec", summary, None, info)
    assert row["DNSMOS"] == f"{d['mean']:.2f}" and row["N"] == "2"
    md = markdown_table([row], cols)
    assert md.splitlines()[0].endswith("| DNSMOS | N |")
    text = write_results_md(tmp_path / "RESULTS.md", [{"name": "codec", "test_set": "test", "summary": summary,
                                                        "probe": None, "info": info}])
    assert f"| codec | 1k | 12.5 | — | — | — | — | — | — | {d['mean']:.2f} | 2 |" in text
    assert "- DNSMOS: DNSMOS P.835 OVRL" in text


def test_dnsmos_build_failure_exits_nonzero_naming_it(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "speechmos", None)  # as if the package were not installed
    sf.write(tmp_path / "a.wav", harmonic(), SR)
    assert score_main(["--ref", str(tmp_path), "--hyp", str(tmp_path), "--metrics", "dnsmos",
                       "--out", str(tmp_path / "o")]) == 2
    assert "metric dnsmos: cannot build the DNSMOS backend" in capsys.readouterr().err
