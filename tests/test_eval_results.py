"""RESULTS.md (paper layout), plots and the comparison table, from a real `xytok score` run."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from xytok.bin.collect_results import main as collect_main
from xytok.bin.make_results import main as make_main
from xytok.bin.score import main as score_main
from xytok.eval.results import COLUMNS, codec_info, model_row
from golden import TINY_A

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
GOLDEN_CFG = str(TINY_A / "config.yaml")


def test_codec_info_bitrate():
    info = codec_info(GOLDEN_CFG)  # 4 quantizers x 64 codes at 12.5 Hz
    assert info["frame_rate"] == 12.5 and info["bps"] == 4 * 6 * 12.5
    assert codec_info(None)["bps"] is None


def test_make_results_and_collect(tmp_path):
    recipe = tmp_path / "recipe"
    exp = recipe / "exp" / "stage1_tiny"
    decode, probe = exp / "decode", exp / "probe"
    (exp / "export").mkdir(parents=True)
    (exp / "export" / "config.yaml").write_text(Path(GOLDEN_CFG).read_text())
    hyp_dir = decode / "test" / "wav"
    hyp_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ref_lines, text_lines = [], []
    for u, words in (("0880", "he was not an ill disposed young man"),
                     ("0930", "he might even have been made amiable himself")):
        src = LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{u}.wav"
        x, sr = sf.read(src)
        sf.write(hyp_dir / f"utt{u}.wav", x + 0.003 * rng.standard_normal(len(x)), sr)
        ref_lines.append(f"utt{u} {src}\n")
        text_lines.append(f"utt{u} {words}\n")
    (tmp_path / "wav.scp").write_text("".join(ref_lines))
    (tmp_path / "text").write_text("".join(text_lines))
    assert score_main(["--ref", str(tmp_path / "wav.scp"), "--hyp", str(hyp_dir), "--text", str(tmp_path / "text"),
                       "--metrics", "pesq_wb,pesq_nb,stoi,wer", "--out", str(decode / "test" / "score")]) == 0
    probe.mkdir()
    (probe / "probe.json").write_text(json.dumps({
        "wer": 0.4321, "cer": 0.2, "wer_counts": {"kaldi": "%WER 43.21 [ 35 / 81, 1 ins, 4 del, 30 sub ]"},
        "probe_config": {"hidden": 256, "num_layers": 2, "epochs": 20, "lr": 0.001, "seed": 0},
        "train_data": "dump/raw/train", "valid_data": "dump/raw/dev", "n_train": 100, "n_valid": 20,
        "features": "z_q", "decoding": "greedy CTC", "model_config": str(exp / "export" / "config.yaml")}))
    (exp / "probe_random_init").mkdir()  # stage 10 with --probe_baseline true
    (exp / "probe_random_init" / "probe.json").write_text(json.dumps({
        "wer": 0.9041, "cer": 0.87, "wer_counts": {"kaldi": "%WER 90.41 [ 73 / 81, 0 ins, 60 del, 13 sub ]"},
        "cer_counts": {"kaldi": "%CER 87.00 [ 87 / 100, 0 ins, 87 del, 0 sub ]"}, "random_init": True}))
    pj = json.loads((probe / "probe.json").read_text())
    pj["cer_counts"] = {"kaldi": "%CER 20.00 [ 20 / 100, 1 ins, 4 del, 15 sub ]"}
    (probe / "probe.json").write_text(json.dumps(pj))

    assert make_main(["--recipe_dir", str(recipe), "--exp_dir", str(decode), "--test_sets", "test"]) == 0
    md = (recipe / "RESULTS.md").read_text()
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in md
    summary = json.loads((decode / "test" / "score" / "summary.json").read_text())
    row = next(ln for ln in md.splitlines() if ln.startswith("| stage1_tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["300", "12.5", "0.43"]  # BPS, frame rate, probe WER
    assert cells[6] == f"{summary['metrics']['pesq_nb']['mean']:.2f}"
    assert cells[8] == f"{100 * summary['wer']['recon_vs_text']['rate']:.2f}%" and cells[9] == "2"
    control = next(ln for ln in md.splitlines() if ln.startswith("| stage1_tiny, random init (probe control) |"))
    assert [c.strip() for c in control.strip("|").split("|")][1:4] == ["300", "12.5", "0.90"]
    assert "%WER 90.41 [ 73 / 81" in md and "%CER 20.00" in md
    gt = next(ln for ln in md.splitlines() if ln.startswith("| ground truth |"))
    assert f"{100 * summary['wer']['ref_vs_text']['rate']:.2f}%" in gt
    for needle in ("pesq.pesq(16000, ref, deg, 'nb')", "pocketsphinx", "basic_english", "95% CI", "Student t",
                   "truncated to the shorter"):
        assert needle in md
    plots = decode / "test" / "plots"
    assert (plots / "hist_pesq_wb.png").is_file() and list(plots.glob("spec_*.png"))

    out = tmp_path / "compare.md"
    assert collect_main([str(decode), "--output", str(out)]) == 0
    table = out.read_text()
    assert "| ours (test) | stage1_tiny |" in table
    assert "| paper | XY-Tokenizer | 1k | 12.5 | 0.13 | 0.83 | 0.91 | 3.00 | 2.41 |" in table


def test_n_per_metric_where_they_differ():
    """N is the largest count; a metric that lost utterances to failures shows its own N."""
    def m(mean, n):
        return {"mean": mean, "n_scored": n}

    summary = {"metrics": {"pesq_wb": m(2.41, 100), "pesq_nb": m(3.0, 97), "stoi": m(0.91, 100), "sim": m(0.83, 100)},
               "wer": {"primary": "recon_vs_text", "recon_vs_text": {"rate": 0.05, "n_utts": 99}}}
    row = model_row("x", summary, None, codec_info(None))
    assert row["N"] == "100"
    assert row["PESQ-WB"] == "2.41" and row["STOI"] == "0.91" and row["SIM"] == "0.83"
    assert row["PESQ-NB"] == "3.00 (N=97)" and row["WER (recon)"] == "5.00% (N=99)"
    summary["metrics"]["pesq_nb"]["n_scored"] = 100
    summary["wer"]["recon_vs_text"]["n_utts"] = 100
    row = model_row("x", summary, None, codec_info(None))
    assert "(N=" not in "".join(row.values())  # all equal: one N column only
