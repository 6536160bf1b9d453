"""`xytok score` end to end with the offline backends (pocketsphinx, resemblyzer) on 3 short utts."""
import json
import math

import numpy as np
import pytest
import soundfile as sf

from xytok.bin.score import main as score_main

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"
UTTS = {"spk1-0880": "sense_and_sensibility_01_austen_64kb-0880.wav",
        "spk1-0930": "sense_and_sensibility_01_austen_64kb-0930.wav"}
TEXT = {"spk1-0880": "He was not an ill-disposed young man.",
        "spk1-0930": "He might even have been made amiable himself."}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """ref: two real utterances + one silent one; hyp: noisy copy, exact copy (shorter), silence missing."""
    d = tmp_path_factory.mktemp("score")
    (d / "ref").mkdir(), (d / "hyp").mkdir()
    rng = np.random.default_rng(0)
    ref_scp, hyp_scp = [], []
    for i, (utt, name) in enumerate(UTTS.items()):
        x, sr = sf.read(f"{LIBRIVOX}/{name}")
        sf.write(d / "ref" / f"{utt}.wav", x, sr)
        y = x + 0.01 * rng.normal(size=x.shape) if i == 0 else x[:-800]  # second: 800 samples shorter
        sf.write(d / "hyp" / f"{utt}.wav", y, sr)
        ref_scp.append(f"{utt} {d / 'ref' / utt}.wav")
        hyp_scp.append(f"{utt} {d / 'hyp' / utt}.wav")
    sf.write(d / "ref" / "spk2-silent.wav", np.zeros(16000), 16000)
    ref_scp.append(f"spk2-silent {d / 'ref' / 'spk2-silent'}.wav")
    (d / "ref.scp").write_text("\n".join(ref_scp) + "\n")
    (d / "hyp.scp").write_text("\n".join(hyp_scp) + "\n")
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in TEXT.items()) + "spk2-silent\n")
    out = d / "out"
    rc = score_main(["--ref", str(d / "ref.scp"), "--hyp", str(d / "hyp"), "--text", str(d / "text"),
                     "--out", str(out), "--metrics", "pesq_wb,pesq_nb,stoi,estoi,sim,wer", "--nj", "1"])
    assert rc == 0
    return d, out, json.loads((out / "summary.json").read_text())


def _tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return header, {ln.split("\t")[0]: dict(zip(header, ln.split("\t"))) for ln in lines[1:]}


def test_tables_and_failures(scored):
    d, out, summary = scored
    header, rows = _tsv(out / "utt_scores.tsv")
    assert header == ["utt_id", "pesq_wb", "pesq_nb", "stoi", "estoi", "sim", "wer"]
    assert set(rows) == {"spk1-0880", "spk1-0930", "spk2-silent"}
    # the missing hypothesis is recorded as a failure with an empty cell, for every metric
    assert all(rows["spk2-silent"][m] == "" for m in header[1:])
    for m in ("pesq_wb", "pesq_nb", "stoi", "estoi", "sim"):
        s = summary["metrics"][m]
        assert s["n_scored"] == 2 and s["n_failed"] == 1
        assert s["failures"]["spk2-silent"].startswith("missing_hypothesis")
        vals = [float(rows[u][m]) for u in ("spk1-0880", "spk1-0930")]
        assert s["mean"] == pytest.approx(np.mean(vals), rel=1e-5)  # failures not averaged in
    # exact copy (truncated): PESQ near max, SIM ~ 1; noisy copy: lower PESQ
    assert float(rows["spk1-0930"]["pesq_wb"]) > 4.4 and float(rows["spk1-0930"]["sim"]) > 0.99
    assert float(rows["spk1-0880"]["pesq_wb"]) < float(rows["spk1-0930"]["pesq_wb"])
    la = summary["length_alignment"]
    assert la["n_utts_cut"] == 1 and la["total_samples_cut"] == 800


def test_wer_outputs(scored):
    d, out, summary = scored
    w = summary["wer"]
    assert w["asr_backend"] == "pocketsphinx" and w["normalizer"] == "basic_english"
    assert w["primary"] == "recon_vs_text"
    n_words = sum(len(t.replace("-", " ").split()) for t in TEXT.values())
    assert w["recon_vs_text"]["n_ref"] == n_words == w["ref_vs_text"]["n_ref"]
    for k in ("recon_vs_text", "ref_vs_text", "recon_vs_asr_ref"):
        c = w[k]
        assert c["errors"] == c["sub"] + c["ins"] + c["del"]
        assert math.isclose(c["rate"], c["errors"] / c["n_ref"])
    lines = (out / "wer.txt").read_text().splitlines()
    assert any(ln.startswith(w["recon_vs_text"]["kaldi"]) for ln in lines)
    assert lines[1].startswith("%WER ") and " ins, " in lines[1] and " sub ]" in lines[1]
    assert (out / "asr_ref.txt").read_text().count("\n") == 3  # silent ref transcribed too
    assert "pesq" in summary["versions"] and summary["versions"]["jiwer"]
    assert summary["sim"]["backend"] == "resemblyzer"
    assert "'nb'" in summary["protocol"]["pesq_nb"]


def test_parallel_matches_serial(scored, tmp_path):
    d, out, _ = scored
    rc = score_main(["--ref", str(d / "ref.scp"), "--hyp", str(d / "hyp.scp"), "--out", str(tmp_path),
                     "--metrics", "pesq_wb,stoi", "--nj", "2"])
    assert rc == 0
    _, serial = _tsv(out / "utt_scores.tsv")
    _, par = _tsv(tmp_path / "utt_scores.tsv")
    for u in serial:
        assert par[u]["pesq_wb"] == serial[u]["pesq_wb"] and par[u]["stoi"] == serial[u]["stoi"]


def test_unreadable_and_bad_metric(scored, tmp_path, capsys):
    d, _, _ = scored
    (tmp_path / "hyp.scp").write_text(f"spk1-0880 {tmp_path}/does_not_exist.wav\n")
    rc = score_main(["--ref", str(d / "ref.scp"), "--hyp", str(tmp_path / "hyp.scp"), "--out", str(tmp_path / "o"),
                     "--metrics", "stoi", "--max_utts", "1"])
    assert rc == 1  # the one metric scored nothing: a failed run, but summary.json is still written
    err = capsys.readouterr().err
    assert "stoi: scored 0 of 1 utterances; most common failure 'unreadable_hypothesis'" in err
    assert "does_not_exist.wav" in err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["metrics"]["stoi"]["n_scored"] == 0 and s["metrics"]["stoi"]["mean"] is None
    assert s["metrics"]["stoi"]["failures"]["spk1-0880"].startswith("unreadable_hypothesis")
    assert score_main(["--ref", str(d / "ref.scp"), "--hyp", str(d / "hyp.scp"), "--out", str(tmp_path),
                       "--metrics", "mos"]) == 2


@pytest.mark.parametrize("nj", [1, 2])
def test_backend_that_cannot_load_fails_the_run(scored, tmp_path, capsys, nj):
    """A SIM model that cannot be built stops the run before scoring (also with worker processes),
    with one message naming metric, backend and model: not one failure per utterance and exit 0."""
    d, _, _ = scored
    missing = tmp_path / "no_such_wavlm"
    rc = score_main(["--ref", str(d / "ref.scp"), "--hyp", str(d / "hyp.scp"), "--out", str(tmp_path / "o"),
                     "--metrics", "stoi,sim", "--sim_backend", "wavlm", "--sim_model", str(missing), "--nj", str(nj)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "metric sim: cannot build the SIM backend 'wavlm'" in err and str(missing) in err
    assert not (tmp_path / "o" / "summary.json").exists()  # nothing scored, nothing claimed


def test_worker_that_cannot_build_raises_from_its_first_job():
    """In a worker process the build error is kept and raised by the first job (a Pool initializer
    that raises would be respawned forever)."""
    from xytok.eval import scoring

    cfg = scoring.ScoreConfig(metrics=("wer",), asr_backend="hubert", asr_model="/nonexistent/hubert")
    scoring._init_worker(cfg)
    with pytest.raises(scoring.BackendError, match="metric wer: cannot build the ASR backend 'hubert'.*/nonexistent"):
        scoring.score_one(("u1", "/nonexistent.wav", None))


def test_stereo_inputs_downmixed_and_counted(scored, tmp_path):
    d, _, _ = scored
    x, sr = sf.read(f"{LIBRIVOX}/{UTTS['spk1-0930']}")
    sf.write(tmp_path / "st.wav", np.stack([x, 0.5 * x], 1), sr)  # stereo, channels differ
    (tmp_path / "hyp.scp").write_text(f"spk1-0930 {tmp_path}/st.wav\n")
    (tmp_path / "ref.scp").write_text(f"spk1-0930 {d / 'ref' / 'spk1-0930'}.wav\n")
    rc = score_main(["--ref", str(tmp_path / "ref.scp"), "--hyp", str(tmp_path / "hyp.scp"),
                     "--out", str(tmp_path / "o"), "--metrics", "stoi"])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["downmix"] == {"method": "mean of the channels", "n_ref_downmixed": 0, "n_hyp_downmixed": 1}
    assert "downmixed" in s["protocol"]["channels"]
    # mean of (x, x/2) = 0.75 x: STOI is scale-invariant, so ~1
    assert s["metrics"]["stoi"]["mean"] > 0.99


def test_recipe_stage9_fails_when_a_model_cannot_load(tmp_path):
    """egs/TEMPLATE/xytok.sh stage 9: `xytok score` exiting non-zero fails the stage, naming the model
    in score.log, and leaves no .score.done (a re-run scores again)."""
    import shutil

    from golden import TINY_A
    from recipe_helpers import make_recipe, run

    rdir = make_recipe(tmp_path, "mini")
    model = rdir / "golden" / "export"
    model.mkdir(parents=True)
    for f in ("config.yaml", "model.ckpt"):
        shutil.copy2(TINY_A / f, model / f)
    ref = rdir / "dump" / "raw" / "test"
    ref.mkdir(parents=True)
    (ref / "wav.scp").write_text(f"utt_a {TINY_A / 'input_short.wav'}\n")
    (ref / "text").write_text("utt_a hello\n")
    dec = rdir / "golden" / "decode" / "test"
    (dec / "wav").mkdir(parents=True)
    (dec / "wav" / "wav.scp").write_text(f"utt_a {TINY_A / 'input_short.wav'}\n")
    (dec / ".decode.done").touch()
    missing = tmp_path / "no_such_hubert"
    r = run("./xytok.sh --train_set tr --valid_set dev --test_sets test --stage 9 --stop_stage 9 "
            f"--inference_model golden/export --scoring_metrics stoi,wer --asr_backend hubert "
            f"--scoring_args '--asr_model {missing}' --nj 1", rdir, timeout=120)
    assert r.returncode != 0
    assert "xytok score failed" in r.stdout + r.stderr
    assert not (dec / ".score.done").exists()
    log = (dec / "score" / "score.log").read_text()
    assert "metric wer: cannot build the ASR backend 'hubert'" in log and str(missing) in log
