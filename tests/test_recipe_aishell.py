"""egs/aishell stages 1-4 and a debug stage 5 on a tiny AISHELL-1 release made here: data_aishell.tgz
holding per-speaker .tar.gz files and the transcript, fetched by local/data.sh from a file:// mirror
(md5-checked; a corrupted archive fails loudly) and extracted twice over; plus an already extracted
tree, used as is."""
import hashlib
import io
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
from xytok.bin.aishell_data import extract_speaker_tarballs, read_transcript  # noqa: E402
from xytok.bin.librispeech_data import DataPrepError  # noqa: E402

SR = 16000
# set -> {speaker: n_utts}
TREE = {"train": {"S0002": 3, "S0003": 2}, "dev": {"S0724": 2}, "test": {"S0764": 2}}
SENTENCES = ["而 对 楼市 成交 抑制 作用 最 大 的 限 购", "也 成为 地方 政府 的 眼中 钉",
             "自 六月 底 呼和浩特 市 率先 宣布 取消 限 购 后", "各地 政府 便 纷纷 跟进",
             "仅 一 个 多 月 的 时间 里", "除了 北京 上海 广州 深圳 四 个 一 线 城市"]
NO_TEXT = "BAC009S0003W0199"      # a train wav with no transcript line: dropped and counted
ONLY_TEXT = "BAC009S0999W0001"    # a transcript line with no wav (AISHELL-1 has such lines)
STAGE_ARGS = ("--stage1_config conf/train_stage1_debug.yaml --stage2_config conf/train_stage2_debug.yaml "
              "--nj 2 --ngpu 0 --min_wav_duration 0.1 "
              "--stage1_args '--max_steps 2 --log_interval 1 --valid_interval 2 --save_interval 2 "
              "--valid_at_start false --num_examples 1'")


def _speech(text: str, rng) -> np.ndarray:
    """Mandarin speech at 16 kHz: espeak-ng's cmn voice when installed, else a synthetic signal."""
    if shutil.which("espeak-ng"):
        wav_bytes = subprocess.run(["espeak-ng", "-v", "cmn", "-s", "220", "--stdout", text],
                                   capture_output=True, check=True).stdout
        wav, sr = sf.read(io.BytesIO(wav_bytes), dtype="float32")
        return resample(wav, sr, SR)
    n = int(rng.integers(SR // 2, SR * 3 // 2))
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2
            + 0.01 * rng.standard_normal(n)).astype(np.float32)


def make_extracted_tree(root: Path, rng=None) -> dict:
    """root/data_aishell/{wav/<set>/<spk>/<utt>.wav, transcript/...}; returns {set: {utt: (spk, text)}}."""
    rng = rng or np.random.default_rng(0)
    made, lines, k = {}, [], 0
    for s, spks in TREE.items():
        made[s] = {}
        for spk, n in spks.items():
            d = root / "data_aishell/wav" / s / spk
            d.mkdir(parents=True)
            for i in range(n):
                utt = f"BAC009{spk}W{121 + i:04d}"
                text = SENTENCES[k % len(SENTENCES)]
                k += 1
                sf.write(d / f"{utt}.wav", _speech(text, rng), SR, subtype="PCM_16")
                # the release's lines: id, then words; some with extra blanks, which are collapsed
                lines.append(f"{utt} {text.replace(' ', '  ', 1)}")
                made[s][utt] = (spk, text)
    spk = NO_TEXT[6:11]
    sf.write(root / "data_aishell/wav/train" / spk / f"{NO_TEXT}.wav", _speech("你好", rng), SR, subtype="PCM_16")
    lines.append(f"{ONLY_TEXT} 没有 音频")
    t = root / "data_aishell/transcript/aishell_transcript_v0.8.txt"
    t.parent.mkdir(parents=True)
    t.write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    return made


def make_release(root: Path, out: Path) -> bytes:
    """data_aishell.tgz in the release's layout: wav/<spk>.tar.gz (each <set>/<spk>/*.wav) + transcript/."""
    wav, staging = root / "data_aishell/wav", out.parent / "speaker_tarballs"
    staging.mkdir()
    for s, spks in TREE.items():
        for spk in spks:
            with tarfile.open(staging / f"{spk}.tar.gz", "w:gz") as tf:
                tf.add(wav / s / spk, arcname=f"{s}/{spk}")
    with tarfile.open(out, "w:gz") as tf:
        tf.add(root / "data_aishell/transcript", arcname="data_aishell/transcript")
        for t in sorted(staging.glob("*.tar.gz")):
            tf.add(t, arcname=f"data_aishell/wav/{t.name}")
    shutil.rmtree(staging)
    return out.read_bytes()


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aishell")
    made = make_extracted_tree(tmp / "made")
    mirror = tmp / "mirror"
    mirror.mkdir()
    good = make_release(tmp / "made", mirror / "data_aishell.tgz")
    env = {"AISHELL": str(tmp / "corpus"), "AISHELL_MIRRORS": f"file://{mirror}",
           "AISHELL_MD5": hashlib.md5(good).hexdigest()}
    rdir = make_recipe(tmp, "aishell")

    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    (mirror / "data_aishell.tgz").write_bytes(bytes(bad))
    r_bad = run("local/data.sh", rdir, env)
    corpus = tmp / "corpus"
    # what the failed run left: nothing that looks downloaded or extracted
    r_bad.left = sorted(p.name for p in corpus.iterdir()) if corpus.exists() else []
    (mirror / "data_aishell.tgz").write_bytes(good)

    r = run(f"./run.sh --stage 1 --stop_stage 5 {STAGE_ARGS}", rdir, env, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return tmp, rdir, made, r, r_bad


def _check_data_dirs(rdir: Path, made: dict, corpus: Path) -> None:
    for s, utts in made.items():
        d = rdir / "data" / s
        for f in ("wav.scp", "text", "utt2spk", "spk2utt"):
            assert_c_sorted(d / f)
        text, u2s, wav = read_kv(d / "text"), read_kv(d / "utt2spk"), read_kv(d / "wav.scp")
        assert set(text) == set(utts)
        for u, (spk, words) in utts.items():
            assert text[u] == words  # Mandarin words as given, single spaces between them
            assert u2s[u] == spk
            assert Path(wav[u]) == (corpus / "data_aishell/wav" / s / spk / f"{u}.wav").resolve()
        s2u = {k: set(v.split()) for k, v in read_kv(d / "spk2utt").items()}
        assert s2u == {spk: {u for u in utts if utts[u][0] == spk} for spk in TREE[s]}


def test_corrupted_download_fails_loudly(recipe_run):
    tmp, _, _, _, r_bad = recipe_run
    assert r_bad.returncode != 0
    assert "md5 mismatch" in r_bad.stdout + r_bad.stderr and "data_aishell.tgz" in r_bad.stdout + r_bad.stderr
    assert "could not get AISHELL-1" in r_bad.stderr
    assert r_bad.left == []  # no data_aishell.tgz(.part), no marker, no data_aishell/


def test_download_nested_extraction_and_data_dirs(recipe_run):
    tmp, rdir, made, r, _ = recipe_run
    corpus = tmp / "corpus"
    out = r.stdout + r.stderr
    assert (corpus / ".data_aishell.tgz.complete").is_file()
    for spks in TREE.values():
        for spk in spks:
            assert (corpus / f"data_aishell/wav/.{spk}.tar.gz.complete").is_file()
    _check_data_dirs(rdir, made, corpus)
    assert f"train: 5 utterances, 2 speakers -> data/train; dropped 1 without transcript (e.g. {NO_TEXT})" in out
    assert "transcript: 10 lines, 1 without a (usable) wav in train/dev/test" in out


def test_dump_16k_not_resampled_and_stage5_export(recipe_run):
    _, rdir, made, r, _ = recipe_run
    out = r.stdout + r.stderr
    for s, utts in made.items():
        org = rdir / "dump/raw/org" / s
        for u in utts:
            src, _ = sf.read(read_kv(rdir / "data" / s / "wav.scp")[u], dtype="float32")
            dumped, sr = sf.read(read_kv(org / "wav.scp")[u], dtype="float32")
            assert sr == 16000
            np.testing.assert_array_equal(dumped, src)  # 16 kHz in, 16 kHz out: sample-exact
        logs = "".join(p.read_text() for p in (org / "logs").glob("dump_audio.*.log"))
        assert "0 resampled to 16000 Hz" in logs and " -> 16000 Hz:" not in logs
    for n in range(1, 6):
        assert f"Stage {n}:" in out
    assert "Successfully finished. [elapsed=" in out
    # one piece per Mandarin character (run.sh: --bpemode char)
    tokens = (rdir / "data/token_list/char5000/tokens.txt").read_text(encoding="utf-8").split()
    chars = {c for utts in (made["train"],) for _, t in utts.values() for c in t.replace(" ", "")}
    assert chars <= set(tokens) and all(len(t) == 1 for t in tokens if t not in ("<pad>", "<unk>"))
    e = rdir / "exp/stage1_train_stage1_debug"
    assert (e / "export/model.ckpt").is_file() and (e / "export/config.yaml").is_file()


def test_extracted_tree_used_as_is_and_resume(recipe_run, tmp_path):
    tmp, rdir0, made, _, _ = recipe_run
    # an already extracted tree (no archives at all): stage 1 uses it as is, same data dirs
    rdir = make_recipe(tmp_path, "aishell")
    r = run("./run.sh --stage 1 --stop_stage 1", rdir,
            {"AISHELL": str(tmp / "made"), "AISHELL_MIRRORS": "file:///nowhere"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "no speaker tarballs: using the extracted tree as is" in r.stdout + r.stderr
    for s in made:
        assert (rdir / "data" / s / "text").read_text() == (rdir0 / "data" / s / "text").read_text()
    # a killed nested extraction: only the tarball without its marker is extracted again
    wav = tmp / "corpus/data_aishell/wav"
    (wav / ".S0003.tar.gz.complete").unlink()
    shutil.rmtree(wav / "train/S0003")
    assert extract_speaker_tarballs(wav) == 1
    assert sorted(p.name for p in (wav / "train/S0003").glob("*.wav")) == \
        sorted([f"{u}.wav" for u, (spk, _) in made["train"].items() if spk == "S0003"] + [f"{NO_TEXT}.wav"])
    assert extract_speaker_tarballs(wav) == 0
    # a broken speaker tarball: an error naming it, and no marker
    (wav / "S0999.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataPrepError, match=r"S0999.tar.gz: cannot extract"):
        extract_speaker_tarballs(wav)
    assert not (wav / ".S0999.tar.gz.complete").exists()
    (wav / "S0999.tar.gz").unlink()


def test_bad_inputs(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("BAC009S0002W0121 而 对\nBAC009S0002W0122\n", encoding="utf-8")
    with pytest.raises(DataPrepError, match=r"t.txt:2: empty transcript for 'BAC009S0002W0122'"):
        read_transcript(t)
    t.write_text("BAC009S0002W0121 而 对\nBAC009S0002W0121 楼市\n", encoding="utf-8")
    with pytest.raises(DataPrepError, match=r"t.txt:2: duplicate utterance id 'BAC009S0002W0121'"):
        read_transcript(t)
    rdir = make_recipe(tmp_path, "aishell")
    r = run("local/data.sh --sets eval", rdir, {"AISHELL": str(tmp_path)})
    assert r.returncode != 0 and "unknown AISHELL-1 set 'eval'" in r.stderr
    r = run("local/data.sh --download false", rdir, {"AISHELL": str(tmp_path / "nowhere")})
    assert r.returncode != 0 and "AISHELL=" in r.stderr and "does not exist" in r.stderr


def test_recipe_settings(tmp_path):
    """run.sh's Mandarin settings reach xytok.sh: CER scoring language and the char tokenizer."""
    r = run("./run.sh --help", make_recipe(tmp_path, "aishell"))
    assert r.returncode == 0, r.stderr
    for opt, value in (("--asr_language", '"zh"'), ("--bpemode", '"char"'), ("--train_set", '"train"'),
                       ("--valid_set", '"dev"'), ("--test_sets", '"test"')):
        line = next(x for x in r.stdout.splitlines() if x.strip().startswith(opt + " "))
        assert line.split()[1] == value, line


def test_entry_point_help(tmp_path):
    for args in ([], ["extract"], ["prepare"]):
        r = run([sys.executable, "-m", "xytok.bin.aishell_data", *args, "--help"], tmp_path)
        assert r.returncode == 0 and "usage:" in r.stdout
