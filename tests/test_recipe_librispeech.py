"""egs/librispeech stages 1-3 on a tiny LibriSpeech-layout tree made here, plus bad-input errors."""
import math
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from recipe_helpers import assert_c_sorted, make_recipe, read_kv, run  # noqa: E402

from xytok.bin.librispeech_data import DataPrepError, scan_part  # noqa: E402

# part -> {speaker: [(chapter, n_utts)]}
TREE = {
    "train-clean-100": {"103": [("1240", 3)], "1034": [("121119", 2)]},
    "dev-clean": {"84": [("121123", 2)]},
    "test-clean": {"1089": [("134686", 2)], "121": [("121726", 1)]},
}
WORDS = "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS".split()


def _make_tree(root: Path, rng=np.random.default_rng(0)) -> dict:
    """LibriSpeech/<part>/<spk>/<chap>/<spk>-<chap>-<utt>.flac + .trans.txt; returns utt -> (path, text)."""
    made = {}
    for part, spks in TREE.items():
        for spk, chapters in spks.items():
            for chap, n in chapters:
                d = root / "LibriSpeech" / part / spk / chap
                d.mkdir(parents=True)
                lines = []
                for i in range(n):
                    utt = f"{spk}-{chap}-{i:04d}"
                    n_samp = int(rng.integers(8000, 24000))  # 0.5-1.5 s, not multiples of 160
                    t = np.arange(n_samp) / 16000
                    wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(n_samp)
                    sf.write(d / f"{utt}.flac", wav.astype(np.float32), 16000, subtype="PCM_16")
                    text = " ".join(rng.choice(WORDS, size=3 + i))
                    lines.append(f"{utt} {text}")
                    made[utt] = (d / f"{utt}.flac", text)
                (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return made


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ls")
    made = _make_tree(tmp / "corpus")
    rdir = make_recipe(tmp, "librispeech")
    cmd = ("./run.sh --stage 1 --stop_stage 3 --train_set train_clean_100 --valid_set dev_clean "
           "--test_sets test_clean --nj 2 "
           "--local_data_opts \"--download false --parts 'train-clean-100 dev-clean test-clean'\"")
    r = run(cmd, rdir, {"LIBRISPEECH": str(tmp / "corpus")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return rdir, made, r


def test_data_dirs(recipe_run):
    rdir, made, r = recipe_run
    for part in TREE:
        d = rdir / "data" / part.replace("-", "_")
        for f in ("wav.scp", "text", "utt2spk", "spk2utt"):
            assert_c_sorted(d / f)
        utts = {u for u in made if made[u][0].parts[-4] == part}
        text, u2s, wav = read_kv(d / "text"), read_kv(d / "utt2spk"), read_kv(d / "wav.scp")
        assert set(text) == utts
        for u in utts:
            assert text[u] == made[u][1]
            assert u2s[u] == u.split("-")[0]
            assert Path(wav[u]) == made[u][0].resolve()
        s2u = read_kv(d / "spk2utt")
        assert {k: set(v.split()) for k, v in s2u.items()} == \
            {s: {u for u in utts if u.startswith(s + "-")} for s in TREE[part]}
    out = r.stdout + r.stderr
    for n in (1, 2, 3):
        assert f"Stage {n}:" in out
    assert "Successfully finished. [elapsed=" in out


def test_features_equal_front_end(recipe_run):
    from xytok.frontend import utterance_log_mel

    rdir, made, _ = recipe_run
    for part in TREE:
        d = rdir / "dump" / "raw" / part.replace("-", "_")
        assert_c_sorted(d / "feats.scp")
        n_samples = {k: int(v) for k, v in read_kv(d / "utt2num_samples").items()}
        feats = dict(kaldiio.load_scp(str(d / "feats.scp")))
        assert set(feats) == {u for u in made if made[u][0].parts[-4] == part}
        for utt, mat in feats.items():
            wav, sr = sf.read(made[utt][0], dtype="float32")
            assert sr == 16000 and n_samples[utt] == len(wav)
            assert mat.shape == (math.ceil(len(wav) / 160), 80) and mat.dtype == np.float32
            np.testing.assert_allclose(mat, utterance_log_mel(wav), rtol=0, atol=1e-6)
            # the dumped 16-bit wav is sample-exact w.r.t. the 16-bit flac source
            dumped, _ = sf.read(read_kv(d / "wav.scp")[utt], dtype="float32")
            np.testing.assert_array_equal(dumped, wav)


def test_rerun_is_idempotent_and_failure_not_marked_done(recipe_run):
    rdir, made, _ = recipe_run
    r = run("./run.sh --stage 2 --stop_stage 3 --train_set train_clean_100 --valid_set dev_clean "
            "--test_sets test_clean --nj 2", rdir)
    assert r.returncode == 0 and "already dumped" in r.stdout and "features already computed" in r.stdout
    # A broken data dir for a new set: stage 2 fails, names the utterance, and leaves no .done.
    bad = rdir / "data" / "bad_set"
    bad.mkdir()
    utt = sorted(u for u in made if made[u][0].parts[-4] == "test-clean")[0]
    (bad / "wav.scp").write_text(f"{utt} {rdir}/missing.flac\n")
    (bad / "text").write_text(f"{utt} HELLO\n")
    (bad / "utt2spk").write_text(f"{utt} {utt.split('-')[0]}\n")
    (bad / "spk2utt").write_text(f"{utt.split('-')[0]} {utt}\n")
    r = run("./run.sh --stage 2 --stop_stage 2 --train_set train_clean_100 --valid_set dev_clean "
            "--test_sets bad_set --nj 2", rdir)
    assert r.returncode != 0
    assert "missing.flac" in r.stdout + r.stderr
    assert not (rdir / "dump/raw/org/bad_set/.done").exists()


def test_help_and_unknown_option(tmp_path):
    rdir = make_recipe(tmp_path, "librispeech")
    r = run("./run.sh --help", rdir)
    assert r.returncode == 0
    for opt in ("--stage", "--stop_stage", "--skip_data_prep", "--skip_train", "--skip_eval", "--nj",
                "--inference_nj", "--ngpu", "--num_nodes", "--gpu_inference", "--dumpdir", "--expdir",
                "--train_set", "--valid_set", "--test_sets", "--stage1_config", "--stage1_args",
                "--stage2_config", "--stage2_args", "--inference_model", "--tag", "--min_wav_duration",
                "--max_wav_duration", "--fs", "--local_data_opts", "--nbpe", "--python",
                "--scoring_metrics", "--asr_backend"):
        assert opt in r.stdout, opt
    r = run("./run.sh --no_such_option 1", rdir)
    assert r.returncode != 0 and "no_such_option" in r.stdout + r.stderr


def test_missing_corpus_or_part(tmp_path):
    rdir = make_recipe(tmp_path, "librispeech")
    r = run("local/data.sh --parts dev-clean --download false", rdir, {"LIBRISPEECH": str(tmp_path / "nowhere")})
    assert r.returncode != 0 and "nowhere" in r.stderr and "does not exist" in r.stderr
    (tmp_path / "corpus" / "LibriSpeech").mkdir(parents=True)
    r = run("local/data.sh --parts dev-clean --download false", rdir, {"LIBRISPEECH": str(tmp_path / "corpus")})
    assert r.returncode != 0 and "dev-clean" in r.stderr and "not found" in r.stderr
    r = run("local/data.sh --parts dev-cleen", rdir, {"LIBRISPEECH": str(tmp_path / "corpus")})
    assert r.returncode != 0 and "unknown LibriSpeech part 'dev-cleen'" in r.stderr


def _one_chapter(tmp_path, n=2):
    d = tmp_path / "p" / "19" / "198"
    d.mkdir(parents=True)
    for i in range(n):
        sf.write(d / f"19-198-{i:04d}.flac", np.zeros(1600, np.float32) + 0.1, 16000)
    (d / "19-198.trans.txt").write_text("".join(f"19-198-{i:04d} A B\n" for i in range(n)))
    return d


def test_bad_inputs_name_the_file(tmp_path):
    d = _one_chapter(tmp_path)
    assert [r[0] for r in scan_part(tmp_path / "p")] == ["19-198-0000", "19-198-0001"]
    # audio without a transcript line
    sf.write(d / "19-198-0002.flac", np.zeros(1600, np.float32), 16000)
    with pytest.raises(DataPrepError, match=r"19-198-0002.flac: no transcript"):
        scan_part(tmp_path / "p")
    (d / "19-198-0002.flac").unlink()
    # empty audio
    sf.write(d / "19-198-0001.flac", np.zeros(0, np.float32), 16000)
    with pytest.raises(DataPrepError, match=r"19-198-0001.flac: (empty|unreadable)"):
        scan_part(tmp_path / "p")
    # unreadable audio
    (d / "19-198-0001.flac").write_bytes(b"not a flac file")
    with pytest.raises(DataPrepError, match=r"19-198-0001.flac: unreadable"):
        scan_part(tmp_path / "p")
    sf.write(d / "19-198-0001.flac", np.zeros(1600, np.float32) + 0.1, 16000)
    # duplicate id in a transcript
    (d / "19-198.trans.txt").write_text("19-198-0000 A\n19-198-0001 B\n19-198-0000 C\n")
    with pytest.raises(DataPrepError, match=r"19-198.trans.txt:3: duplicate utterance id '19-198-0000'"):
        scan_part(tmp_path / "p")
    # missing transcript file
    (d / "19-198.trans.txt").unlink()
    with pytest.raises(DataPrepError, match=r"19-198.trans.txt: missing transcript file"):
        scan_part(tmp_path / "p")
    # transcript for audio that does not exist
    (d / "19-198.trans.txt").write_text("19-198-0000 A\n19-198-0001 B\n19-198-0007 C\n")
    with pytest.raises(DataPrepError, match=r"'19-198-0007' but no audio"):
        scan_part(tmp_path / "p")


FAKE_PYTHON = r'''#!/usr/bin/env bash
# Stands in for python in stages 5-6: records its arguments and writes the export a trainer would.
# (stage 6 first asks python -c for the stage-2 config's output rate: a 16 kHz decoder here)
[ "$1" = -c ] && { echo 16000; exit 0; }
echo "$*" >> "$FAKE_LOG"
out=""; prev=""
for a in "$@"; do [ "$prev" = --output_dir ] && out=$a; prev=$a; done
mkdir -p "$out/export" && touch "$out/export/model.ckpt" "$out/export/config.yaml"
'''


def test_training_stage_wiring(tmp_path):
    """Stages 5-6 with a stand-in python: flags, exp names, multi-node launcher, .done, exp run.sh."""
    rdir = make_recipe(tmp_path, "librispeech")
    for s in ("train_clean_100", "dev_clean"):
        (rdir / "dump/raw" / s).mkdir(parents=True)
        (rdir / "dump/raw" / s / ".feats.done").touch()
    (rdir / "data/token_list/unigram5000").mkdir(parents=True)
    (rdir / "data/token_list/unigram5000/.done").touch()
    (rdir / "my_s1.yaml").write_text("task: stage1\n")
    (rdir / "my_s2.yaml").write_text("task: stage2\n")
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    cmd = (f"./run.sh --stage 5 --stop_stage 6 --python {fake} --stage1_config my_s1.yaml "
           "--stage2_config my_s2.yaml --stage1_args '--max_steps 7' --ngpu 2 --num_nodes 2 "
           "--node_rank 0 --rdzv_endpoint node0:29600")
    r = run(cmd, rdir, {"FAKE_LOG": str(log)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    s1, s2 = calls
    for c in calls:
        # xytok.bin.train builds the torchrun launcher itself (tests/test_launch.py)
        assert "--ngpu 2 --num_nodes 2 --node_rank 0 --rdzv_endpoint node0:29600" in c
        assert "-m xytok.bin.train" in c and "--ngpu 2" in c
        assert "--train_data dump/raw/train_clean_100 --valid_data dump/raw/dev_clean" in c
        assert "--spm_model data/token_list/unigram5000/bpe.model" in c
    assert "--config my_s1.yaml --output_dir exp/stage1_my_s1" in s1 and s1.endswith("--max_steps 7")
    assert "--config my_s2.yaml --output_dir exp/stage2_my_s2" in s2
    assert "--init_param exp/stage1_my_s1/export/model.ckpt" in s2
    for e in ("stage1_my_s1", "stage2_my_s2"):
        assert (rdir / "exp" / e / ".done").exists()
        assert "--stage1_args --max_steps\\ 7" in (rdir / "exp" / e / "run.sh").read_text()
    # finished stages are skipped on a re-run; the generated run.sh re-runs one stage
    r = run("exp/stage1_my_s1/run.sh", rdir, {"FAKE_LOG": str(log)})
    assert r.returncode == 0 and "already trained" in r.stdout
    assert len(log.read_text().splitlines()) == 2


def _py(args, cwd):
    return run([sys.executable, "-m"] + args, cwd)


def test_dump_resamples_and_downmixes_and_names_bad_utterances(tmp_path):
    stereo_8k = (0.1 * np.random.default_rng(1).standard_normal((8000, 2))).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo_8k, 8000)
    (tmp_path / "wav.scp").write_text(f"u1 {tmp_path}/a.wav\n")
    r = _py(["xytok.bin.dump_audio", "--wav_scp", "wav.scp", "--out_dir", "d", "--out_scp", "o.scp",
             "--out_utt2num_samples", "n"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resampling 8000 Hz -> 16000 Hz" in r.stderr and "downmixing 2 channels" in r.stderr
    assert (tmp_path / "n").read_text() == "u1 16000\n"
    info = sf.info(str(tmp_path / "d/u1.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    # empty audio: error naming the utterance, and no output scp (the shard is not "finished")
    sf.write(tmp_path / "e.wav", np.zeros(0, np.float32), 16000)
    (tmp_path / "bad.scp").write_text(f"u1 {tmp_path}/a.wav\nu2 {tmp_path}/e.wav\n")
    for mod, outs in (("xytok.bin.dump_audio", ["--out_dir", "d2", "--out_scp", "o2.scp", "--out_utt2num_samples", "n2"]),
                      ("xytok.bin.compute_feats", ["--out_ark", "f.ark", "--out_scp", "f.scp"])):
        r = _py([mod, "--wav_scp", "bad.scp"] + outs, tmp_path)
        assert r.returncode != 0 and "'u2'" in r.stderr and "empty" in r.stderr, (mod, r.stderr)
    assert not (tmp_path / "o2.scp").exists() and not (tmp_path / "f.scp").exists()


def test_train_spm_too_many_pieces_is_a_clear_error(tmp_path):
    (tmp_path / "text").write_text("a HELLO WORLD\nb GOOD MORNING\n")
    r = _py(["xytok.bin.train_spm", "--text", "text", "--vocab_size", "500", "--output_dir", "tok"], tmp_path)
    assert r.returncode != 0 and "vocab_size=500" in r.stderr and "lower --nbpe" in r.stderr
    assert not (tmp_path / "tok").exists()
    (tmp_path / "text").write_text("a HELLO WORLD\nb\n")
    r = _py(["xytok.bin.train_spm", "--text", "text", "--vocab_size", "10", "--output_dir", "tok"], tmp_path)
    assert r.returncode != 0 and "text:2: utterance 'b' has an empty transcript" in r.stderr


@pytest.mark.parametrize("mod", ["xytok.bin.dump_audio", "xytok.bin.compute_feats", "xytok.bin.train_spm",
                                 "xytok.bin.librispeech_data", "xytok.bin.make_mini_corpus",
                                 "xytok.bin.train_semantic_ctc"])
def test_entry_points_help(mod, tmp_path):
    r = _py([mod, "--help"], tmp_path)
    assert r.returncode == 0 and "usage:" in r.stdout


def test_corpus_change_reaches_the_dump(recipe_run):
    """An utterance added to the corpus after a full run reaches data/ and dump/ on the next
    --stage 1 run (local/data.sh's part signatures + stage 2's fingerprints); unchanged parts stay."""
    rdir, made, _ = recipe_run
    chap = rdir.parent / "corpus" / "LibriSpeech" / "test-clean" / "121" / "121726"
    new = "121-121726-0001"
    wav = 0.2 * np.sin(2 * np.pi * 200 * np.arange(12000) / 16000)
    sf.write(chap / f"{new}.flac", wav.astype(np.float32), 16000, subtype="PCM_16")
    with open(chap / "121-121726.trans.txt", "a") as f:
        f.write(f"{new} TURNIPS AND CARROTS\n")
    r = run("./run.sh --stage 1 --stop_stage 2 --train_set train_clean_100 --valid_set dev_clean "
            "--test_sets test_clean --nj 2 "
            "--local_data_opts \"--download false --parts 'train-clean-100 dev-clean test-clean'\"",
            rdir, {"LIBRISPEECH": str(rdir.parent / "corpus")})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "test-clean: the corpus changed since data/test_clean was prepared" in out
    assert "train-clean-100: data/train_clean_100 already prepared, corpus unchanged" in out
    assert read_kv(rdir / "data/test_clean/text")[new] == "TURNIPS AND CARROTS"
    assert new in read_kv(rdir / "dump/raw/test_clean/wav.scp")
    assert len(read_kv(rdir / "dump/raw/test_clean/wav.scp")) == 4
