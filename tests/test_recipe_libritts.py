"""egs/libritts stages 1-4 and a debug stage 5 on a tiny LibriTTS-layout tree made here (24 kHz WAV,
.normalized.txt / .original.txt), with test-clean fetched through local/data.sh's download path
(a file:// mirror, checksum-verified; a corrupted archive fails loudly)."""
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from recipe_helpers import assert_c_sorted, make_recipe, read_kv, run  # noqa: E402

from xytok.audio import resample  # noqa: E402
from xytok.bin.libritts_data import scan_part  # noqa: E402
from xytok.bin.librispeech_data import DataPrepError  # noqa: E402

SR = 24000
# part -> {speaker: [(chapter, n_utts)]}; speakers 103 and 1034 because with LibriTTS's own `_` ids
# 1034's utterances would sort before 103's (the recipe's ids use `-`)
TREE = {
    "train-clean-100": {"103": [("1241", 3)], "1034": [("121119", 3)]},
    "dev-clean": {"84": [("121123", 2)]},
    "test-clean": {"1089": [("134686", 2)], "121": [("121726", 1)]},
}
SENTENCES = ["He hoped there would be stew for dinner.", "Turnips and carrots, and bruised potatoes.",
             "The chaos in which his ardour extinguished itself.", "Stuff it into you, his belly counselled him.",
             "After early nightfall the yellow lamps would light up.", "Hello, Bertie, any good in your mind?"]
# train-clean-100 utterances that the recipe must skip, by reason (the files are made broken below)
BROKEN = {"missing text": "103_1241_000000_000003", "empty text": "103_1241_000000_000004",
          "missing wav": "1034_121119_000000_000003", "empty wav": "1034_121119_000000_000004"}
STAGE_ARGS = ("--stage1_config conf/train_stage1_debug.yaml --stage2_config conf/train_stage2_debug.yaml "
              "--nj 2 --ngpu 0 --nbpe 60 --min_wav_duration 0.1 "
              "--stage1_args '--max_steps 2 --log_interval 1 --valid_interval 2 --save_interval 2 "
              "--valid_at_start false --num_examples 1'")


def _speech(text: str, rng) -> np.ndarray:
    """Speech at 24 kHz: espeak-ng when installed, else a voiced-like synthetic signal."""
    if shutil.which("espeak-ng"):
        wav_bytes = subprocess.run(["espeak-ng", "-v", "en", "-s", "220", "--stdout", text],
                                   capture_output=True, check=True).stdout
        wav, sr = sf.read(io.BytesIO(wav_bytes), dtype="float32")
        return resample(wav, sr, SR)
    n = int(rng.integers(SR // 2, SR * 3 // 2))
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
            + 0.01 * rng.standard_normal(n)).astype(np.float32)


def make_tree(root: Path, rng=None, tree=TREE) -> dict:
    """LibriTTS/<part>/<spk>/<chap>/<spk>_<chap>_<para>_<sent>.{wav,normalized.txt,original.txt}.

    Returns {part: {recipe utt id: (wav path, normalized text, original text, n_samples at 24 kHz)}}
    for the usable utterances; the BROKEN ones are made in train-clean-100 on top."""
    rng = rng or np.random.default_rng(0)
    made = {}
    k = 0
    for part, spks in tree.items():
        made[part] = {}
        for spk, chapters in spks.items():
            for chap, n in chapters:
                d = root / "LibriTTS" / part / spk / chap
                d.mkdir(parents=True)
                for i in range(n):
                    stem = f"{spk}_{chap}_000000_{i:06d}"
                    original = SENTENCES[k % len(SENTENCES)]
                    normalized = original.replace(",", "").replace("?", "").replace(".", "")
                    k += 1
                    wav = _speech(original, rng)
                    sf.write(d / f"{stem}.wav", wav, SR, subtype="PCM_16")
                    (d / f"{stem}.normalized.txt").write_text(normalized)
                    (d / f"{stem}.original.txt").write_text(original + "\n")
                    made[part][stem.replace("_", "-")] = (d / f"{stem}.wav", normalized, original, len(wav))
                # the corpus's bookkeeping files, which the recipe ignores
                (d / f"{spk}_{chap}.trans.tsv").write_text("x\ty\tz\n")
    if tree is not TREE:
        return made
    tr = root / "LibriTTS" / "train-clean-100"
    for reason, stem in BROKEN.items():
        d = tr / stem.split("_")[0] / stem.split("_")[1]
        if reason != "missing wav":
            sf.write(d / f"{stem}.wav", _speech("one more", rng), SR, subtype="PCM_16")
        if reason != "missing text":
            (d / f"{stem}.normalized.txt").write_text("" if reason == "empty text" else "SOME TEXT")
        if reason == "empty wav":
            (d / f"{stem}.wav").write_bytes(b"")
    return made


def _targz(src_root: Path, part: str, dest: Path) -> bytes:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src_root / "LibriTTS" / part, arcname=f"LibriTTS/{part}")
    return dest.read_bytes()


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("libritts")
    made = make_tree(tmp / "made")
    corpus = tmp / "corpus"  # LIBRITTS: train/dev parts present; test-clean comes from the mirror
    for part in ("train-clean-100", "dev-clean"):
        shutil.copytree(tmp / "made/LibriTTS" / part, corpus / "LibriTTS" / part)
    mirror = tmp / "mirror"
    mirror.mkdir()
    good = _targz(tmp / "made", "test-clean", mirror / "test-clean.tar.gz")
    (tmp / "checksums").write_text(f"test-clean {hashlib.sha256(good).hexdigest()} {len(good)}\n")
    env = {"LIBRITTS": str(corpus), "LIBRITTS_MIRRORS": f"file://{mirror}",
           "LIBRITTS_CHECKSUMS": str(tmp / "checksums")}
    rdir = make_recipe(tmp, "libritts")

    # a corrupted archive of the right size: the checksum check fails loudly, nothing is kept
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    (mirror / "test-clean.tar.gz").write_bytes(bytes(bad))
    r_bad = run("local/data.sh --parts test-clean", rdir, env)
    r_bad.left = sorted(p.name for p in corpus.iterdir()) + sorted(p.name for p in (corpus / "LibriTTS").iterdir())
    (mirror / "test-clean.tar.gz").write_bytes(good)

    r = run(f"./run.sh --stage 1 --stop_stage 5 --test_sets test_clean {STAGE_ARGS}", rdir, env, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return rdir, made, r, r_bad, corpus


def test_corrupted_download_fails_loudly(recipe_run):
    rdir, _, _, r_bad, corpus = recipe_run
    assert r_bad.returncode != 0
    assert "sha256 mismatch" in r_bad.stdout + r_bad.stderr and "test-clean.tar.gz" in r_bad.stdout + r_bad.stderr
    assert "could not get LibriTTS test-clean" in r_bad.stderr
    # nothing that looks downloaded or extracted: no test-clean.tar.gz(.part), no marker, no part dir
    assert r_bad.left == ["LibriTTS", "dev-clean", "train-clean-100"]


def test_download_extract_and_data_dirs(recipe_run):
    rdir, made, r, _, corpus = recipe_run
    out = r.stdout + r.stderr
    # test-clean was fetched from the mirror, verified, extracted with its marker
    assert (corpus / "test-clean.tar.gz").is_file() and (corpus / "LibriTTS/.test-clean.complete").is_file()
    assert "test-clean: downloading from OpenSLR (resumable, sha256 checked)" in out and "test-clean: using" not in out
    for part, utts in made.items():
        d = rdir / "data" / part.replace("-", "_")
        for f in ("wav.scp", "text", "utt2spk", "spk2utt"):
            assert_c_sorted(d / f)
        text, u2s, wav = read_kv(d / "text"), read_kv(d / "utt2spk"), read_kv(d / "wav.scp")
        assert set(text) == set(utts)
        for u, (path, normalized, _, _) in utts.items():
            assert text[u] == normalized
            assert u2s[u] == u.split("-")[0]
            assert Path(wav[u]).name == path.name and Path(wav[u]).is_file()
        s2u = {k: set(v.split()) for k, v in read_kv(d / "spk2utt").items()}
        assert s2u == {s: {u for u in utts if u.split("-")[0] == s} for s in TREE[part]}
    # the broken utterances were skipped and counted, by reason
    assert "train-clean-100: skipped 4 utterance(s): 1 missing wav, 1 empty wav, 1 missing text, 1 empty text" in out
    for reason, stem in BROKEN.items():
        assert f"train-clean-100: {reason}: {stem}" in out
    assert "sample rates 24000 Hz x" in out


def test_dump_is_16k_and_resampling_logged(recipe_run):
    rdir, made, r, _, _ = recipe_run
    for part, utts in made.items():
        s = part.replace("-", "_")
        org = rdir / "dump/raw/org" / s
        n_samples = {k: int(v) for k, v in read_kv(org / "utt2num_samples").items()}
        for u, (_, _, _, n24) in utts.items():
            info = sf.info(read_kv(org / "wav.scp")[u])
            assert info.samplerate == 16000 and info.frames == n_samples[u]
            assert abs(info.frames - n24 * 2 / 3) <= 1  # 24 kHz -> 16 kHz
        logs = "".join(p.read_text() for p in (org / "logs").glob("dump_audio.*.log"))
        # one summary line per job: together they count every utterance of the set
        counts = re.findall(r"resampled 24000 -> 16000 Hz: (\d+) utterance\(s\)", logs)
        assert counts and sum(map(int, counts)) == len(utts), logs[-2000:]
        # and the recipe's own log says it once per set, summed over the jobs
        assert f"{s}: resampled 24000 -> 16000 Hz: {len(utts)} utterance(s)" in r.stdout, r.stdout[-3000:]
        assert (rdir / "dump/raw" / s / "feats.scp").is_file()


def test_tokenizer_and_debug_stage5_export(recipe_run):
    rdir, _, r, _, _ = recipe_run
    out = r.stdout + r.stderr
    for n in range(1, 6):
        assert f"Stage {n}:" in out
    assert "Successfully finished. [elapsed=" in out
    assert (rdir / "data/token_list/unigram60/bpe.model").is_file()
    e = rdir / "exp/stage1_train_stage1_debug"
    assert (e / "export/model.ckpt").is_file() and (e / "export/config.yaml").is_file()


def test_original_text_and_missing_part(tmp_path):
    made = make_tree(tmp_path / "c")
    rows, skipped, rates = scan_part(tmp_path / "c/LibriTTS/dev-clean", "original")
    assert {r[0]: r[2] for r in rows} == {u: v[2] for u, v in made["dev-clean"].items()}
    assert rates == {SR: len(rows)} and not any(skipped.values())
    # a file outside the <spk>_<chapter>_<para>_<sent> naming is an error that names it
    d = tmp_path / "c/LibriTTS/dev-clean/84/121123"
    (d / "84_999_000000_000001.wav").write_bytes(b"RIFF")
    with pytest.raises(DataPrepError, match=r"84_999_000000_000001.wav: file name .* chapter 121123"):
        scan_part(tmp_path / "c/LibriTTS/dev-clean")
    (d / "84_999_000000_000001.wav").unlink()
    # unreadable audio is an error naming the file (only missing/empty ones are skipped)
    (d / "84_121123_000000_000000.wav").write_bytes(b"not a wav file")
    with pytest.raises(DataPrepError, match=r"84_121123_000000_000000.wav: unreadable audio"):
        scan_part(tmp_path / "c/LibriTTS/dev-clean")
    rdir = make_recipe(tmp_path, "libritts")
    r = run("local/data.sh --parts dev-other --download false", rdir, {"LIBRITTS": str(tmp_path / "c")})
    assert r.returncode != 0 and "dev-other not found and --download false" in r.stderr
    r = run("local/data.sh --parts dev-clean --text raw", rdir, {"LIBRITTS": str(tmp_path / "c")})
    assert r.returncode != 0 and "--text must be normalized or original" in r.stderr


def test_train_960_combines_the_training_parts(tmp_path):
    tree = {"train-clean-100": {"19": [("198", 1)]}, "train-clean-360": {"20": [("205", 1)]},
            "train-other-500": {"21": [("210", 2)]}, "dev-clean": {"84": [("121123", 1)]}}
    made = make_tree(tmp_path / "c", tree=tree)
    rdir = make_recipe(tmp_path, "libritts")
    env = {"LIBRITTS": str(tmp_path / "c"), "XYTOK_TRAIN_SET": "train_960", "XYTOK_VALID_SET": "dev_clean",
           "XYTOK_TEST_SETS": "dev_clean"}
    r = run("local/data.sh --download false", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    train = {u for p in ("train-clean-100", "train-clean-360", "train-other-500") for u in made[p]}
    assert set(read_kv(rdir / "data/train_960/text")) == train and len(train) == 4
    assert_c_sorted(rdir / "data/train_960/utt2spk")
    # --text original re-prepares every part and the combined set
    r = run("local/data.sh --download false --text original", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = read_kv(rdir / "data/train_960/text")
    assert {u: text[u] for u in train} == {u: v[2] for p in made if p != "dev-clean" for u, v in made[p].items()}


def test_recipe_settings(tmp_path):
    r = run("./run.sh --help", make_recipe(tmp_path, "libritts"))
    assert r.returncode == 0, r.stderr
    for opt, value in (("--train_set", '"train_clean_100"'), ("--valid_set", '"dev_clean"'),
                       ("--test_sets", '"test_clean test_other"'), ("--fs", '"16000"')):
        line = next(x for x in r.stdout.splitlines() if x.strip().startswith(opt + " "))
        assert line.split(None, 1)[1].startswith(value), line


def test_entry_point_help(tmp_path):
    r = run([sys.executable, "-m", "xytok.bin.libritts_data", "--help"], tmp_path)
    assert r.returncode == 0 and "--text" in r.stdout


def test_utterance_added_later_reaches_dump(recipe_run):
    """Runs last (it changes the module's corpus): stage 1 re-scans the corpus, stage 2 redoes only
    the set that changed."""
    rdir, made, _, _, corpus = recipe_run
    d = corpus / "LibriTTS/dev-clean/84/121123"
    sf.write(d / "84_121123_000000_000009.wav", _speech("A late addition.", np.random.default_rng(3)), SR)
    (d / "84_121123_000000_000009.normalized.txt").write_text("A late addition")
    env = {"LIBRITTS": str(corpus), "LIBRITTS_MIRRORS": "file:///nowhere"}
    r = run(f"./run.sh --stage 1 --stop_stage 2 --test_sets test_clean {STAGE_ARGS}", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert read_kv(rdir / "data/dev_clean/text")["84-121123-000000-000009"] == "A late addition"
    assert "84-121123-000000-000009" in read_kv(rdir / "dump/raw/dev_clean/wav.scp")
    assert "train_clean_100: already dumped, up to date" in r.stdout
    assert "dev_clean: already dumped" not in r.stdout
