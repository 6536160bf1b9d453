"""xytok/data/table.py, the one Kaldi-table parser, and its users: data dirs (strict), wav.scp
for the CLI (xytok.audio), scoring lists (xytok.eval.inputs); eval's load_wav is xytok.audio's
loader; the data-dir command line in xytok.bin.datadir."""
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xytok.audio import AudioError, load_audio, read_wav_scp
from xytok.data import datadir
from xytok.data.table import TableError, iter_table, read_table, write_table
from xytok.eval import inputs

REPO = Path(__file__).resolve().parent.parent


def write(path, text):
    path = Path(path)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return str(path)


def test_strict_problems_are_collected_with_file_and_line(tmp_path):
    p = write(tmp_path / "text", b"a 1\nc 3\r\nb 2\n\n  d 4\nc again\n\xff\xfe x\ne  five  words \t\n")
    problems = []
    table = read_table(p, problems, strict=True)
    assert table == {"a": "1", "c": "3", "b": "2", "e": "five  words"}  # inner blanks kept, trailing cut
    want = [f"{p}:2: line ends with a carriage return", f"{p}:3: not sorted (LC_ALL=C): 'b' comes after 'c'",
            f"{p}:4: empty line", f"{p}:5: line starts with whitespace",
            f"{p}:6: duplicate id 'c' (first on line 2)", f"{p}:7: not valid UTF-8"]
    assert len(problems) == len(want)
    for got, w in zip(problems, want):
        assert got.startswith(w), (got, w)
    with pytest.raises(TableError, match=r"text:2: line ends with a carriage return"):
        read_table(p, strict=True)  # without a list: the first problem raises
    # datadir's reader lists them all in one DataDirError
    with pytest.raises(datadir.DataDirError, match=r"carriage return.*; .*not sorted.*duplicate id 'c'"):
        datadir.read_table(p)


def test_lenient_lists(tmp_path):
    p = write(tmp_path / "wav.scp", "\n  b  /x/b.wav  \nA sox a.flac -t wav - |\n\nonly_id\n")
    assert read_table(p) == {"b": "/x/b.wav", "A": "sox a.flac -t wav - |", "only_id": ""}
    assert [(k, n) for k, _, n in iter_table(p)] == [("b", 2), ("A", 3), ("only_id", 5)]
    with pytest.raises(TableError, match=r"wav\.scp:5: malformed line \(expected '<id> <value>'\), "
                                         r"no value after id 'only_id'"):
        read_table(p, require_value=True)
    dup = write(tmp_path / "ids", "u1\nu2 x\nu1\n")
    with pytest.raises(TableError, match=r"ids:3: duplicate utterance id 'u1' \(first on line 1\)"):
        read_table(dup, key_name="utterance id")
    assert [k for k, _, _ in iter_table(dup, unique=False)] == ["u1", "u2", "u1"]
    with pytest.raises(TableError, match="cannot read"):
        read_table(tmp_path / "missing")


def test_open_files_and_strict_streaming(tmp_path):
    assert read_table(io.StringIO("x 1\ny 2\n")) == {"x": "1", "y": "2"}
    assert read_table(io.BytesIO(b"x 1\n")) == {"x": "1"}
    # strict, raising: sorted input, so a duplicate is found without remembering every id
    p = write(tmp_path / "utt2spk", "a s\nb s\nb t\n")
    with pytest.raises(TableError, match=r"utt2spk:3: duplicate id 'b' \(first on line 2\)"):
        list(iter_table(p, strict=True))
    with pytest.raises(TableError, match="not sorted"):
        list(iter_table(write(tmp_path / "u2", "b s\na s\n"), strict=True))


def test_write_then_read_round_trip(tmp_path):
    table = {"b": "two words", "a": "", "é": "x", "B": "y"}
    p = str(tmp_path / "t")
    write_table(p, table)
    assert Path(p).read_text(encoding="utf-8") == "B y\na\nb two words\né x\n"
    problems = []
    assert read_table(p, problems, strict=True) == table and problems == []


def test_every_reader_agrees(tmp_path):
    """The same file gives the same entries, and the same malformed line the same located
    message, through datadir, xytok.audio and xytok.eval.inputs."""
    p = write(tmp_path / "wav.scp", "u1 /a/u1.wav\nu2 cat /a/u2.wav |\n")
    want = {"u1": "/a/u1.wav", "u2": "cat /a/u2.wav |"}
    assert datadir.read_table(p) == dict(read_wav_scp(p)) == inputs.read_scp(p) == want
    bad = write(tmp_path / "bad.scp", "u1 /a/u1.wav\nu1 /a/again.wav\n")
    for reader, err in ((read_wav_scp, AudioError), (inputs.read_scp, ValueError), (inputs.read_text, ValueError),
                        (datadir.read_table, datadir.DataDirError)):
        with pytest.raises(err, match=r"bad\.scp:2: duplicate (utterance )?id 'u1'"):
            reader(bad)
    assert inputs.read_text(write(tmp_path / "text", "u1 HELLO  WORLD\nu2\n")) == {"u1": "HELLO  WORLD", "u2": ""}


def test_eval_load_wav_is_the_one_loader(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    path = str(tmp_path / "a8k.wav")
    sf.write(path, x, 8000, subtype="FLOAT")
    wav, sr = inputs.load_wav(path)
    ref, info = load_audio(path)  # same resampler, same values
    assert sr == 8000 and wav.dtype == np.float64 and info.resampled
    np.testing.assert_array_equal(wav, ref.astype(np.float64))
    # entries only xytok.audio knew before: a tar member (shard.tar:OFFSET:SIZE)
    tar = tmp_path / "shard.tar"
    with tarfile.open(tar, "w") as t:
        t.add(path, arcname="a8k.wav")
    with tarfile.open(tar) as t:
        m = t.getmember("a8k.wav")
    wav2, _ = inputs.load_wav(f"{tar}:{m.offset_data}:{m.size}")
    np.testing.assert_array_equal(wav2, wav)
    # datadir's length probe (validate --check-audio, filter-duration) reads the same entries
    assert datadir.audio_info(path) == datadir.audio_info(f"cat {path} |") == (8000, 8000)
    assert datadir.audio_info(f"{tar}:{m.offset_data}:{m.size}") == (8000, 8000)
    stereo = str(tmp_path / "st.wav")
    sf.write(stereo, np.stack([x, x], 1), 16000)
    mono, info = inputs.load_wav_info(stereo)  # downmixed (mean of channels) like everywhere else, and said so
    assert info.downmixed and info.orig_channels == 2
    np.testing.assert_allclose(mono, x, atol=1e-4)
    with pytest.raises(inputs.AudioReadError, match="file not found"):
        inputs.load_wav(str(tmp_path / "nope.wav"), utt="u9")


def _cli(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "xytok.bin.datadir", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=60)


def test_datadir_command_line(tmp_path):
    r = _cli("utt2spk-to-spk2utt", stdin="a s1\nb s2\nc s1\n")
    assert r.returncode == 0 and r.stdout == "s1 a c\ns2 b\n"
    r = _cli("utt2spk-to-spk2utt", stdin="a s1\na s2\n")
    assert r.returncode == 1 and "duplicate id 'a' (first on line 1)" in r.stderr
    ids = write(tmp_path / "ids", "b\nb\nc\n")  # an id list may repeat ids (filter_scp.pl)
    r = _cli("filter-scp", ids, write(tmp_path / "in", "a 1\nb 2\nc 3\n"))
    assert r.returncode == 0 and r.stdout == "b 2\nc 3\n"
    assert _cli("--help").returncode == 0
    old = subprocess.run([sys.executable, "-m", "xytok.data.datadir", "validate", "x"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert old.returncode != 0 and "python -m xytok.bin.datadir validate x" in old.stderr
