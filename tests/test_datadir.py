"""Data-dir tools: utils/*.sh|*.pl wrappers over xytok/data/datadir.py."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xytok.data import datadir

UTILS = Path(__file__).resolve().parent.parent / "utils"
ENV = dict(os.environ, XYTOK_PYTHON=sys.executable,
           PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
SPEAKERS = ["s1", "s2", "s3"]


def call(tool, *args, cwd=None):
    return subprocess.run([str(UTILS / tool), *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=120)


def write(path, lines):
    Path(path).write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def data(tmp_path):
    """3 speakers x 3 utterances of 0.1/0.2/0.3 s of 16 kHz noise, a valid data dir."""
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    d = tmp_path / "data"
    d.mkdir()
    wav, text, utt2spk, nsamp = [], [], [], []
    rng = np.random.default_rng(0)
    for spk in SPEAKERS:
        for i in range(3):
            utt = f"{spk}-u{i}"
            n = 1600 * (i + 1)
            sf.write(wav_dir / f"{utt}.wav", (rng.standard_normal(n) * 0.1).astype(np.float32), 16000)
            wav.append(f"{utt} {wav_dir}/{utt}.wav")
            text.append(f"{utt} HELLO WORLD {i}")
            utt2spk.append(f"{utt} {spk}")
            nsamp.append(f"{utt} {n}")
    write(d / "wav.scp", wav)
    write(d / "text", text)
    write(d / "utt2spk", utt2spk)
    write(d / "utt2num_samples", nsamp)
    write(d / "spk2utt", [f"{s} {s}-u0 {s}-u1 {s}-u2" for s in SPEAKERS])
    (d / "feats_type").write_text("raw\n")
    return d


def lines(path):
    return Path(path).read_text().splitlines()


def validate(d, *opts):
    return call("validate_data_dir.sh", "--no-feats", *opts, d)


def test_good_dir_passes(data):
    r = validate(data, "--check-audio", "--fs", "16000")
    assert r.returncode == 0, r.stderr
    assert "OK (9 utterances)" in r.stdout


def edit(path, fn):
    path.write_text("".join(f"{l}\n" for l in fn(lines(path))))


def _corrupt_audio(data, how):
    target = data.parent / "wav" / "s2-u1.wav"
    if how == "rate":
        sf.write(target, np.zeros(800, np.float32) + 0.1, 8000)
    elif how == "empty":
        sf.write(target, np.zeros(0, np.float32), 16000)
    elif how == "garbage":
        target.write_bytes(b"this is not audio")
    elif how == "length":
        sf.write(target, np.zeros(1000, np.float32) + 0.1, 16000)


# (mutation, extra validate options, substrings the error must contain)
PROBLEMS = {
    "unsorted": (lambda d: edit(d / "wav.scp", lambda L: L[1:] + L[:1]), [],
                 ["wav.scp", "not sorted", "s1-u0"]),
    "duplicate": (lambda d: edit(d / "text", lambda L: L[:2] + [L[1]] + L[2:]), [],
                  ["text", "duplicate id 's1-u1'"]),
    "missing_text": (lambda d: edit(d / "text", lambda L: [l for l in L if not l.startswith("s2-u0")]),
                     [], ["text", "have no entry", "s2-u0"]),
    "extra_wav": (lambda d: edit(d / "wav.scp", lambda L: L + ["s9-x /x.wav"]), [],
                  ["wav.scp", "not in utt2spk", "s9-x"]),
    "empty_transcript": (lambda d: edit(d / "text", lambda L: [l.split()[0] if l.startswith("s3-u1") else l for l in L]),
                         [], ["text", "empty transcript", "s3-u1"]),
    "stale_spk2utt": (lambda d: edit(d / "spk2utt", lambda L: [l.replace(" s1-u2", "") for l in L]), [],
                      ["spk2utt", "does not match utt2spk", "s1"]),
    "no_spk2utt": (lambda d: (d / "spk2utt").unlink(), [], ["spk2utt", "missing"]),
    "speaker_order": (lambda d: edit(d / "utt2spk", lambda L: [l.replace("s1-u2 s1", "s1-u2 zz") for l in L]),
                      [], ["utt2spk", "s1-u2", "speaker"]),
    "missing_audio": (lambda d: (d.parent / "wav" / "s2-u1.wav").unlink(), [],
                      ["wav.scp", "do not exist", "s2-u1"]),
    "wrong_rate": (lambda d: _corrupt_audio(d, "rate"), ["--check-audio", "--fs", "16000"],
                   ["wav.scp", "not 16000 Hz", "s2-u1 (8000 Hz)"]),
    "empty_audio": (lambda d: _corrupt_audio(d, "empty"), ["--check-audio"], ["wav.scp", "empty", "s2-u1"]),
    "garbage_audio": (lambda d: _corrupt_audio(d, "garbage"), ["--check-audio"],
                      ["wav.scp", "cannot be read", "s2-u1"]),
    "length_mismatch": (lambda d: _corrupt_audio(d, "length"), ["--check-audio"],
                        ["utt2num_samples", "disagrees", "s2-u1 (1000 samples"]),
    "crlf": (lambda d: (d / "text").write_bytes((d / "text").read_bytes().replace(b"\n", b"\r\n")), [],
             ["text:1", "carriage return"]),
    "bad_num_samples": (lambda d: edit(d / "utt2num_samples", lambda L: [l.replace("s3-u2 4800", "s3-u2 abc") for l in L]),
                        [], ["utt2num_samples", "not a positive number", "s3-u2"]),
    "no_utt2spk": (lambda d: (d / "utt2spk").unlink(), [], ["utt2spk", "missing"]),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_each_problem_is_reported(data, problem):
    mutate, opts, expected = PROBLEMS[problem]
    mutate(data)
    r = validate(data, *opts)
    assert r.returncode == 1, f"{problem} not detected: {r.stdout}"
    for text in expected:
        assert text in r.stderr, f"{problem}: '{text}' not in:\n{r.stderr}"


def test_feats_scp_required_and_resolved(data, tmp_path):
    import kaldiio

    r = call("validate_data_dir.sh", data)
    assert r.returncode == 1 and "feats.scp: missing" in r.stderr
    ark = tmp_path / "feats.ark"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{data}/feats.scp") as w:
        for line in lines(data / "utt2spk"):
            w(line.split()[0], np.zeros((5, 80), np.float32))
    r = call("validate_data_dir.sh", "--check-audio", data)
    assert r.returncode == 0, r.stderr
    ark.rename(tmp_path / "moved.ark")
    r = call("validate_data_dir.sh", data)
    assert r.returncode == 1 and "feats.scp" in r.stderr and "feats.ark" in r.stderr


def test_fix_data_dir(data):
    edit(data / "wav.scp", lambda L: L[::-1] + ["s9-x /x.wav"])            # unsorted + extra
    edit(data / "text", lambda L: [l.split()[0] if l.startswith("s3-u1") else l  # empty text
                                   for l in L if not l.startswith("s2-u0")])       # missing
    edit(data / "spk2utt", lambda L: L[:1])                                 # stale
    original_wav = (data / "wav.scp").read_text()
    assert validate(data).returncode == 1
    r = call("fix_data_dir.sh", data)
    assert r.returncode == 0, r.stderr
    assert "kept 7" in r.stderr and "removed 3" in r.stderr  # s2-u0, s3-u1 (empty text), s9-x
    assert "s3-u1" in r.stderr
    assert (data / ".backup" / "wav.scp").read_text() == original_wav
    r = validate(data, "--check-audio")
    assert r.returncode == 0, r.stderr
    assert [l.split()[0] for l in lines(data / "wav.scp")] == \
        ["s1-u0", "s1-u1", "s1-u2", "s2-u1", "s2-u2", "s3-u0", "s3-u2"]
    assert lines(data / "spk2utt")[1] == "s2 s2-u1 s2-u2"
    assert (data / "feats_type").read_text() == "raw\n"


def test_split_data_per_utt_and_per_spk(data):
    r = call("split_data.sh", data, 4)
    assert r.returncode == 0, r.stderr
    got = []
    for i in range(1, 5):
        part = data / "split4" / str(i)
        assert validate(part).returncode == 0
        ids = [l.split()[0] for l in lines(part / "utt2spk")]
        for name in ("wav.scp", "text", "utt2num_samples"):
            assert [l.split()[0] for l in lines(part / name)] == ids
        got.append(ids)
    assert [len(g) for g in got] == [3, 2, 2, 2]
    assert sum(got, []) == [l.split()[0] for l in lines(data / "utt2spk")]
    r = call("split_data.sh", "--per-spk", data, 2)
    assert r.returncode == 0, r.stderr
    spk_sets = [{l.split()[1] for l in lines(data / "split2" / str(i) / "utt2spk")} for i in (1, 2)]
    assert not spk_sets[0] & spk_sets[1] and spk_sets[0] | spk_sets[1] == set(SPEAKERS)
    r = call("split_data.sh", "--per-spk", data, 4)
    assert r.returncode == 1 and "3 speakers into 4" in r.stderr
    r = call("split_data.sh", data, 10)
    assert r.returncode == 1 and "9" in r.stderr


def test_split_scp(data, tmp_path):
    outs = [tmp_path / f"wav.{i}.scp" for i in range(1, 5)]
    r = call("split_scp.pl", data / "wav.scp", *outs)
    assert r.returncode == 0, r.stderr
    assert [len(lines(o)) for o in outs] == [3, 2, 2, 2]
    assert sum((lines(o) for o in outs), []) == lines(data / "wav.scp")
    outs = outs[:3]
    r = call("split_scp.pl", f"--utt2spk={data}/utt2spk", data / "wav.scp", *outs)
    assert r.returncode == 0, r.stderr
    assert [{l[:2] for l in lines(o)} for o in outs] == [{"s1"}, {"s2"}, {"s3"}]
    # lines are copied verbatim and need not be sorted (Kaldi's behaviour)
    (tmp_path / "raw.scp").write_text("b\tx  y\na 1\nc 2\n")
    r = call("split_scp.pl", tmp_path / "raw.scp", tmp_path / "r1", tmp_path / "r2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r1").read_text() == "b\tx  y\na 1\n" and lines(tmp_path / "r2") == ["c 2"]
    r = call("split_scp.pl", tmp_path / "raw.scp", *[tmp_path / f"o{i}" for i in range(4)])
    assert r.returncode == 1 and "3 lines into 4" in r.stderr


def test_split_by_group_balances():
    keys = [f"a-{i}" for i in range(6)] + ["b-0", "c-0", "c-1", "d-0", "d-1", "d-2"]
    group = {k: k[0] for k in keys}
    parts = datadir.split_by_group(keys, group, 2)
    assert [len(p) for p in parts] == [6, 6]
    with pytest.raises(datadir.DataDirError, match="not contiguous"):
        datadir.split_by_group(["a-0", "b-0", "a-1"], {"a-0": "a", "b-0": "b", "a-1": "a"}, 2)


def test_spk2utt_conversions_and_filter_scp(data, tmp_path):
    r = call("utt2spk_to_spk2utt.pl", data / "utt2spk")
    assert r.stdout.splitlines() == lines(data / "spk2utt")
    r2 = subprocess.run([str(UTILS / "spk2utt_to_utt2spk.pl")], input=r.stdout, capture_output=True,
                        text=True, env=ENV)
    assert r2.stdout.splitlines() == lines(data / "utt2spk")
    write(tmp_path / "ids", ["s2-u1", "s1-u0"])
    r = call("filter_scp.pl", tmp_path / "ids", data / "text")
    assert [l.split()[0] for l in r.stdout.splitlines()] == ["s1-u0", "s2-u1"]
    r = call("filter_scp.pl", "--exclude", tmp_path / "ids", data / "text")
    assert len(r.stdout.splitlines()) == 7
    write(tmp_path / "spks", ["s3"])
    r = call("filter_scp.pl", "-f", "2", tmp_path / "spks", data / "utt2spk")
    assert r.stdout.splitlines() == ["s3-u0 s3", "s3-u1 s3", "s3-u2 s3"]


@pytest.mark.parametrize("source", ["utt2num_samples", "audio_headers"])
def test_filter_by_duration(data, tmp_path, source):
    if source == "audio_headers":
        (data / "utt2num_samples").unlink()
    out = tmp_path / "filtered"
    r = call("filter_by_duration.sh", "--min", "0.15", "--max", "0.25", data, out)
    assert r.returncode == 0, r.stderr
    assert "kept 3 of 9" in r.stderr and "3 shorter" in r.stderr and "3 longer" in r.stderr
    assert [l.split()[0] for l in lines(out / "wav.scp")] == ["s1-u1", "s2-u1", "s3-u1"]
    assert validate(out, "--check-audio").returncode == 0
    r = call("filter_by_duration.sh", "--min", "5", data, tmp_path / "none")
    assert r.returncode == 1 and "no utterance" in r.stderr


def test_copy_combine_subset(data, tmp_path):
    r = call("copy_data_dir.sh", "--utt-prefix", "x-", "--spk-prefix", "x-", data, tmp_path / "x")
    assert r.returncode == 0, r.stderr
    assert lines(tmp_path / "x" / "utt2spk")[0] == "x-s1-u0 x-s1"
    r = call("combine_data.sh", tmp_path / "both", data, tmp_path / "x")
    assert r.returncode == 0, r.stderr
    assert validate(tmp_path / "both").returncode == 0
    assert len(lines(tmp_path / "both" / "text")) == 18
    r = call("combine_data.sh", tmp_path / "dup", data, data)
    assert r.returncode == 1 and "duplicate utterance ids" in r.stderr and "s1-u0" in r.stderr
    write(tmp_path / "keep", ["s3-u0", "s1-u2"])
    r = call("subset_data_dir.sh", "--utt-list", tmp_path / "keep", data, tmp_path / "sub")
    assert r.returncode == 0, r.stderr
    assert lines(tmp_path / "sub" / "spk2utt") == ["s1 s1-u2", "s3 s3-u0"]
    r = call("subset_data_dir.sh", data, 3, tmp_path / "even")
    assert r.returncode == 0, r.stderr
    assert [l.split()[0] for l in lines(tmp_path / "even" / "text")] == ["s1-u0", "s2-u0", "s3-u0"]
    r = call("subset_data_dir.sh", "--last", data, 2, tmp_path / "last")
    assert r.returncode == 0, r.stderr
    assert lines(tmp_path / "last" / "spk2utt") == ["s3 s3-u1 s3-u2"]
    write(tmp_path / "bad", ["nope"])
    r = call("subset_data_dir.sh", "--utt-list", tmp_path / "bad", data, tmp_path / "x2")
    assert r.returncode == 1 and "nope" in r.stderr


def test_segments_dirs_keep_their_recordings(tmp_path):
    d = tmp_path / "seg"
    d.mkdir()
    sf.write(tmp_path / "r1.wav", np.zeros(32000, np.float32) + 0.1, 16000)
    sf.write(tmp_path / "r2.wav", np.zeros(32000, np.float32) + 0.1, 16000)
    write(d / "wav.scp", [f"r1 {tmp_path}/r1.wav", f"r2 {tmp_path}/r2.wav"])
    write(d / "segments", ["s1-a r1 0.0 0.5", "s1-b r1 0.5 1.9", "s2-a r2 0.1 0.3"])
    write(d / "utt2spk", ["s1-a s1", "s1-b s1", "s2-a s2"])
    write(d / "spk2utt", ["s1 s1-a s1-b", "s2 s2-a"])
    write(d / "text", ["s1-a A", "s1-b B", "s2-a C"])
    assert call("validate_data_dir.sh", "--no-feats", d).returncode == 0
    r = call("filter_by_duration.sh", "--min", "0.4", d, tmp_path / "long")
    assert r.returncode == 0, r.stderr
    assert lines(tmp_path / "long" / "wav.scp") == [f"r1 {tmp_path}/r1.wav"]
    assert validate(tmp_path / "long").returncode == 0
    write(d / "segments", ["s1-a r1 0.0 0.5", "s1-b r9 0.5 1.9", "s2-a r2 0.3 0.1"])
    r = validate(d)
    assert r.returncode == 1 and "s1-b (r9)" in r.stderr and "s2-a" in r.stderr


def test_core_needs_no_audio_libraries(data, tmp_path):
    # a soundfile that cannot be imported shadows the real one: only --check-audio may need it
    fake = tmp_path / "fake_site" / "soundfile"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no soundfile here', name='soundfile')\n")
    env = dict(ENV, PYTHONPATH=str(tmp_path / "fake_site"))
    run = lambda *a: subprocess.run([str(UTILS / "validate_data_dir.sh"), "--no-feats", *map(str, a)],
                                    capture_output=True, text=True, env=env)  # noqa: E731
    assert run(data).returncode == 0
    r = run("--check-audio", data)
    assert r.returncode == 1 and "needs soundfile" in r.stderr and "s1-u0" in r.stderr


def test_length_agrees_at_the_audio_rate_or_16k():
    from xytok.data.datadir import _length_agrees

    assert _length_agrees(16000, 16000, "16000") and not _length_agrees(16000, 16000, "16001")
    # a data dir over 22.05 kHz sources lists 16 kHz lengths (within 1 ms)
    assert _length_agrees(22050, 22050, "16000") and _length_agrees(22050, 22050, "16010")
    assert not _length_agrees(22050, 22050, "15000")
    # a dump at another rate (stage 6's raw_24000) lists lengths at that rate
    assert _length_agrees(24000, 24000, "24000")
    assert not _length_agrees(24000, 24000, "23000") and not _length_agrees(24000, 24000, "abc")
