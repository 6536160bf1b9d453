"""egs/TEMPLATE on a `path|speaker|text|set` corpus made here: stages 1-5 go through the template, and
the stage markers' fingerprints keep the run from going stale (changed data or options redo what
depends on them; a trained model whose inputs changed stops the run with a message); stage 1 and
dump_audio list every broken audio file; ./run.sh --help shows the recipe's values.

The tests of this module run in order on one recipe dir (each step builds on the last)."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from recipe_helpers import assert_c_sorted, make_pipe_corpus, make_recipe, read_kv, run  # noqa: E402

# (file, speaker, set, seconds, rate): 16, 22.05 and 24 kHz sources; 0.6-1.0 s
ROWS = ([(f"u{i:02d}.wav", f"spk{i % 3}", "train", 0.6 + 0.1 * (i % 5), 16000 if i % 2 else 22050)
         for i in range(10)]
        + [(f"d{i}.wav", f"spk{i}", "dev", 0.8, 16000) for i in range(3)]
        + [(f"t{i}.wav", "spkt", "test", 1.0, 24000) for i in range(2)])
DATA = "--nj 1 --bpemode char --nbpe 100 --compute_feats false"
TRAIN = ("--stage1_config s1.yaml --tag dbg "
         "--stage1_args '--max_steps 2 --log_interval 1 --valid_interval 2 --save_interval 2 "
         "--valid_at_start false --num_examples 1'")
EXP = "exp/stage1_dbg"


def utts(path: Path) -> set:
    return set(read_kv(path))


def out_of(r) -> str:
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("template")
    make_pipe_corpus(tmp / "corpus", ROWS)
    rdir = make_recipe(tmp, "TEMPLATE")
    shutil.copy(rdir / "conf" / "train_stage1_debug.yaml", rdir / "s1.yaml")
    return rdir, {"CORPUS": str(tmp / "corpus")}, tmp / "corpus"


def test_template_stages_1_to_5(recipe):
    rdir, env, corpus = recipe
    r = run(f"./run.sh --stage 1 --stop_stage 5 {DATA} {TRAIN}", rdir, env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    for s, n in (("train", 10), ("dev", 3), ("test", 2)):
        d = rdir / "data" / s
        for f in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2num_samples"):
            assert_c_sorted(d / f)
        u2s = read_kv(d / "utt2spk")
        assert len(u2s) == n and all(u.startswith(spk + "-") for u, spk in u2s.items())
        assert utts(rdir / "dump/raw" / s / "wav.scp") == set(u2s)
        # data/<set>/utt2num_samples: 16 kHz lengths from the headers, = what stage 2 dumped
        expect = {u: int(v) for u, v in read_kv(d / "utt2num_samples").items()}
        for u, v in read_kv(rdir / "dump/raw" / s / "wav.scp").items():
            assert sf.info(v).samplerate == 16000 and sf.info(v).frames == expect[u]
    assert read_kv(rdir / "data/train/text")["spk1-u01"].endswith(".")  # text kept as written
    assert "22050 Hz: 5" in out_of(r) and "data/train: audio OK (10 files" in r.stdout
    marker = json.loads((rdir / "dump/raw/org/train/.done").read_text())
    assert marker["files"]["data/train/wav.scp"]["lines"] == 10 and marker["options"]["fs"] == "16000"
    assert (rdir / EXP / "export/model.ckpt").is_file() and (rdir / EXP / ".done").is_file()
    assert "Successfully finished" in r.stdout


def test_unchanged_rerun_is_up_to_date(recipe):
    rdir, env, _ = recipe
    log_mtime = (rdir / EXP / "train.log").stat().st_mtime_ns
    r = run(f"./run.sh --stage 1 --stop_stage 5 {DATA} {TRAIN}", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for s in ("train", "dev", "test"):
        assert f"data/{s}: audio already checked, up to date" in r.stdout
        assert f"{s}: already dumped, up to date" in r.stdout and f"{s}: already filtered, up to date" in r.stdout
    assert "Stage 4:" in r.stdout and "already trained, up to date (data/token_list/char100/.done)" in r.stdout
    assert f"already trained, up to date ({EXP}/.done)" in r.stdout
    assert "re-dumping" not in r.stdout and "filtering again" not in r.stdout
    assert (rdir / EXP / "train.log").stat().st_mtime_ns == log_mtime


def test_changed_config_stops_stage_5(recipe):
    rdir, env, _ = recipe
    cfg = rdir / "s1.yaml"
    original = cfg.read_text()
    cfg.write_text(original.replace("lr: 1.0e-3", "lr: 5.0e-4"))
    try:
        r = run(f"./run.sh --stage 5 --stop_stage 5 {DATA} {TRAIN}", rdir, env)
    finally:
        cfg.write_text(original)
    assert r.returncode != 0
    err = out_of(r)
    assert f"{EXP} was trained on other inputs: s1.yaml changed: different content" in err
    assert f"rm -r {EXP}" in err and "--tag" in err and "Successfully finished" not in err
    # changed stage args: the same stop, naming the option
    r = run(f"./run.sh --stage 5 --stop_stage 5 {DATA} {TRAIN.replace('--max_steps 2', '--max_steps 3')}", rdir, env)
    assert r.returncode != 0
    assert f"{EXP} was trained on other inputs: --stage1_args changed" in out_of(r)


def test_changed_data_is_dumped_again(recipe):
    rdir, env, corpus = recipe
    meta = corpus / "metadata.txt"
    lines = meta.read_text().splitlines()
    moved = next(i for i, line in enumerate(lines) if line.startswith("wav/spk0/d0.wav"))
    lines[moved] = lines[moved].replace("|dev", "|train")
    shutil.copy(corpus / "wav/spk1/u01.wav", corpus / "wav/spk1/added.wav")
    lines.append("wav/spk1/added.wav|spk1|An utterance added later.|train")
    meta.write_text("\n".join(lines) + "\n")
    kept_wav = rdir / "dump/raw/org/train/data/spk1-u01.wav"
    kept_mtime = kept_wav.stat().st_mtime_ns

    r = run(f"./run.sh --stage 1 --stop_stage 4 {DATA}", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "train: data/train changed: 12 utterances, was 10; re-dumping" in r.stdout
    assert "dev: data/dev changed: 2 utterances, was 3; re-dumping" in r.stdout
    assert "test: already dumped, up to date" in r.stdout
    assert "training the tokenizer again" in r.stdout
    train, dev = utts(rdir / "dump/raw/train/wav.scp"), utts(rdir / "dump/raw/dev/wav.scp")
    assert train == utts(rdir / "data/train/wav.scp") and len(train) == 12
    assert {"spk0-d0", "spk1-added"} <= train
    assert dev == utts(rdir / "data/dev/wav.scp") and not train & dev
    assert kept_wav.stat().st_mtime_ns == kept_mtime  # unchanged utterances are not dumped again
    assert "Successfully finished" in r.stdout

    # the model trained on the old data is not silently kept or silently replaced
    r = run(f"./run.sh --stage 5 --stop_stage 5 {DATA} {TRAIN}", rdir, env)
    assert r.returncode != 0
    assert f"{EXP} was trained on other inputs: " in out_of(r)
    assert "dump/raw/train changed: 12 utterances, was 10" in out_of(r)
    assert "Successfully finished" not in r.stdout


def test_changed_min_wav_duration_is_applied(recipe):
    rdir, env, _ = recipe
    (rdir / "dump/raw/org/test/.done").write_text("")  # an empty marker of an earlier xytok
    r = run(f"./run.sh --stage 2 --stop_stage 2 {DATA} --min_wav_duration 0.75", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "train: already dumped, up to date" in r.stdout
    assert "train: --min_wav_duration 0.75, was 0.5; filtering again" in r.stdout
    assert "test: dump/raw/org/test/.done is an empty marker" in r.stdout and "test: already filtered" in r.stdout
    n = {u: int(v) for u, v in read_kv(rdir / "dump/raw/org/train/utt2num_samples").items()}
    assert utts(rdir / "dump/raw/train/wav.scp") == {u for u, v in n.items() if v >= 0.75 * 16000}
    assert len(utts(rdir / "dump/raw/train/wav.scp")) < len(n)


def test_later_stage_refuses_dumps_older_than_data(recipe):
    rdir, env, corpus = recipe
    meta = corpus / "metadata.txt"
    meta.write_text(meta.read_text().replace("An utterance added later.", "A transcript corrected later."))
    r = run(f"./run.sh --stage 1 --stop_stage 1 {DATA}", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = run(f"./run.sh --stage 4 --stop_stage 4 {DATA} --min_wav_duration 0.75", rdir, env)
    assert r.returncode != 0
    assert "train: data/train changed: different text since stage 2 dumped it: run from --stage 2" in out_of(r)


def test_help_shows_the_recipes_values(recipe):
    rdir, env, _ = recipe
    r = run("./run.sh --nj 3 --help", rdir, env)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  --")}
    assert r.stdout.startswith("Recipe: TEMPLATE")
    assert lines["--train_set"].split()[1] == '"train"' and "xytok.sh default: \"\"" in lines["--train_set"]
    assert lines["--test_sets"].split()[1] == '"test"'
    assert lines["--nbpe"].split()[1] == '"500"' and lines["--nj"].split()[1] == '"3"'
    assert lines["--fs"].split()[1] == '"16000"' and "default" not in lines["--fs"].split("#")[0]


def _bad_audio(root: Path) -> None:
    """Two files whose headers read fine (prepare_data accepts them) but whose audio does not."""
    rng = np.random.default_rng(1)
    good = root / "wav/spk0/u0.wav"
    sf.write(root / "corrupt.flac", sf.read(good)[0], 16000)
    b = bytearray((root / "corrupt.flac").read_bytes())
    b[200:] = rng.integers(0, 256, len(b) - 200, dtype=np.uint8).tobytes()
    (root / "corrupt.flac").write_bytes(bytes(b))
    x = sf.read(good)[0].astype(np.float32)
    x[100:200] = np.nan
    sf.write(root / "nan.wav", x, 16000, subtype="FLOAT")


def test_broken_audio_is_listed_at_once(tmp_path):
    rows = [("u0.wav", "spk0", "train", 0.6, 16000), ("u1.wav", "spk1", "train", 0.6, 16000),
            ("d0.wav", "spk0", "dev", 0.6, 16000), ("t0.wav", "spk1", "test", 0.6, 16000)]
    meta = make_pipe_corpus(tmp_path / "corpus", rows)
    _bad_audio(tmp_path / "corpus")
    with open(meta, "a") as f:
        f.write("corrupt.flac|spk2|Bad flac.|train\nnan.wav|spk2|Bad samples.|train\n")
    rdir = make_recipe(tmp_path, "TEMPLATE")
    env = {"CORPUS": str(tmp_path / "corpus")}
    r = run(f"./run.sh --stage 1 --stop_stage 2 {DATA} --nj 2", rdir, env)
    assert r.returncode != 0
    err = out_of(r)
    assert "data/train: utterance spk2-corrupt: not readable by libsndfile" in err
    assert "data/train: utterance spk2-nan: NaN/Inf samples" in err
    assert "2 utterance(s) have unusable audio" in err and "drop them in local/data.sh" in err
    assert "Stage 2:" not in err
    # without the stage-1 check, stage 2's dump_audio names both (one per job here) and keeps the rest
    r = run(f"./run.sh --stage 1 --stop_stage 2 {DATA} --nj 2 --check_audio false", rdir, env)
    assert r.returncode != 0
    err = out_of(r)
    assert "BAD AUDIO utterance 'spk2-corrupt'" in err and "BAD AUDIO utterance 'spk2-nan'" in err
    assert not (rdir / "dump/raw/org/train/.done").exists()
    assert {p.name for p in (rdir / "dump/raw/org/train/data").glob("*.wav")} == {"spk0-u0.wav", "spk1-u1.wav"}


def test_prepare_data_lists_every_problem(tmp_path):
    from xytok.bin.prepare_data import PrepareError, length_at, normalise_text, prepare

    rows = [("a.wav", "s1", "train", 0.5, 22050), ("b.wav", "s1", "train", 0.5, 16000)]
    meta = make_pipe_corpus(tmp_path, rows)
    good = meta.read_text()
    meta.write_text(good + "missing.wav|s1|Where is it.|train\nwav/s1/b.wav|s2|   |train\n"
                    "wav/s1/a.wav|s1|Twice.|train\nwav/s1/b.wav|s 3|Space.|train\nonly|two\n")
    with pytest.raises(PrepareError) as e:
        prepare(str(meta), str(tmp_path / "data/train"), "train", log=lambda *a: None)
    msg = str(e.value)
    assert "5 problem(s)" in msg
    for want in ("line 3: audio file not found", "line 4 (wav/s1/b.wav): empty transcript",
                 "line 5 (", "duplicate utterance id 's1-a' (also line 1)", "line 6 (wav/s1/b.wav): speaker id 's 3'",
                 "line 7: expected path|speaker|text[|set], got 2"):
        assert want in msg, want
    assert not (tmp_path / "data/train").exists()  # nothing written
    meta.write_text(good)
    prepare(str(meta), str(tmp_path / "data/train"), "train", text_norm="upper_nopunct", log=lambda *a: None)
    n = read_kv(tmp_path / "data/train/utt2num_samples")
    assert int(n["s1-a"]) == length_at(sf.info(tmp_path / "wav/s1/a.wav").frames, 22050, 16000) == 8000
    assert all(t == t.upper() and "." not in t for t in read_kv(tmp_path / "data/train/text").values())
    assert normalise_text(" Don't  stop, 'now'! ", "upper_nopunct") == "DON'T STOP NOW"
