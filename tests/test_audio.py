"""xytok.audio (loading, wav.scp, writing) and xytok.io_codes (ark/scp and npy round trips)."""
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from xytok.audio import AudioError, list_audio_dir, load_audio, read_wav_scp, write_wav
from xytok.io_codes import CodesError, CodesReader, CodesWriter, read_codes, write_codes


def sine(sr, seconds=1.0, freq=440.0, amp=0.5):
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resample_to_16k_is_logged_and_accurate(tmp_path, caplog, sr):
    path = str(tmp_path / f"tone_{sr}.wav")
    sf.write(path, sine(sr), sr, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="xytok.audio"):
        wav, info = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == 16000 and info.resampled and info.orig_sample_rate == sr
    msgs = [r.getMessage() for r in caplog.records if "resampling" in r.getMessage()]
    assert msgs and path in msgs[0] and f"{sr} Hz -> 16000 Hz" in msgs[0]
    # the tone survives: compare with a tone generated at 16 kHz, away from the edges
    ref = sine(16000)
    assert np.max(np.abs(wav[800:-800] - ref[800:-800])) < 0.01


def test_16k_mono_is_untouched(tmp_path, caplog):
    x = sine(16000, 0.5)
    path = str(tmp_path / "a.wav")
    sf.write(path, x, 16000, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="xytok.audio"):
        wav, info = load_audio(path)
    np.testing.assert_array_equal(wav, x)
    assert not info.resampled and not info.downmixed
    assert not caplog.records


def test_pcm16_reads_as_int_over_32768(tmp_path):
    ints = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    path = str(tmp_path / "i.wav")
    sf.write(path, ints, 16000, subtype="PCM_16")
    wav, _ = load_audio(path)
    np.testing.assert_array_equal(wav, ints.astype(np.float32) / 32768.0)


def test_stereo_downmix_is_mean_and_logged(tmp_path, caplog):
    left, right = sine(16000, 0.25, 300), sine(16000, 0.25, 500, amp=0.2)
    path = str(tmp_path / "st.wav")
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="xytok.audio"):
        wav, info = load_audio(path)
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-7)
    assert info.downmixed and info.orig_channels == 2
    assert any("downmixing 2 channels" in r.getMessage() and path in r.getMessage() for r in caplog.records)


def test_pipe_entry_and_wav_scp(tmp_path):
    x = sine(16000, 0.3)
    path = str(tmp_path / "p.flac")
    sf.write(path, x, 16000, subtype="PCM_24")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"uttA {path}\nuttB cat {path} |\n\n")
    entries = read_wav_scp(str(scp))
    assert list(entries) == ["uttA", "uttB"] and entries["uttB"].endswith("|")
    a, _ = load_audio(entries["uttA"])
    b, _ = load_audio(entries["uttB"])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, x, atol=1e-6)


def test_failing_pipe_names_command(tmp_path):
    with pytest.raises(AudioError, match="pipe command failed.*does-not-exist"):
        load_audio(f"cat {tmp_path}/does-not-exist.wav |")


def test_wav_scp_errors(tmp_path):
    bad = tmp_path / "bad.scp"
    bad.write_text("u1 a.wav\nu2\n")
    with pytest.raises(AudioError, match=r"bad\.scp:2: malformed"):
        read_wav_scp(str(bad))
    dup = tmp_path / "dup.scp"
    dup.write_text("u1 a.wav\nu1 b.wav\n")
    with pytest.raises(AudioError, match=r"dup\.scp:2: duplicate utterance id 'u1'.*line 1"):
        read_wav_scp(str(dup))


def test_corrupt_empty_nan_missing_raise_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage that is not a wav file" * 10)
    with pytest.raises(AudioError, match="corrupt.wav.*cannot read"):
        load_audio(str(corrupt))

    empty = str(tmp_path / "empty.wav")
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        load_audio(empty)

    nan = str(tmp_path / "nan.wav")
    x = sine(16000, 0.1)
    x[5] = np.nan
    x[7] = np.inf
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*2 NaN/Inf"):
        load_audio(nan)

    with pytest.raises(AudioError, match="missing.wav.*not found"):
        load_audio(str(tmp_path / "missing.wav"))
    assert issubclass(AudioError, ValueError)


def test_list_audio_dir_sorted_by_stem(tmp_path):
    for name in ["b.wav", "a.flac", "B.wav", "notes.txt", ".b.tmp123.wav"]:
        p = str(tmp_path / name)
        if name.endswith(".txt"):
            open(p, "w").write("x")
        else:
            sf.write(p, sine(16000, 0.1), 16000)
    assert list(list_audio_dir(str(tmp_path))) == ["B", "a", "b"]  # LC_ALL=C order
    sf.write(str(tmp_path / "a.wav"), sine(16000, 0.1), 16000)
    with pytest.raises(AudioError, match="same utterance id 'a'"):
        list_audio_dir(str(tmp_path))


def test_write_wav_clips_and_reports(tmp_path, caplog):
    x = np.array([0.0, 0.5, 1.5, -2.0], dtype=np.float32)
    path = str(tmp_path / "sub" / "o.wav")
    with caplog.at_level(logging.WARNING, logger="xytok.audio"):
        n = write_wav(path, x)
    assert n == 2 and any("clipping 2 of 4" in r.getMessage() for r in caplog.records)
    y, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and sf.info(path).subtype == "PCM_16"
    np.testing.assert_allclose(y, [0.0, 0.5, 32767 / 32768, -1.0], atol=1 / 32768)
    assert os.listdir(tmp_path / "sub") == ["o.wav"]  # no temp file left


# ---------------------------------------------------------------- codes I/O

def _some_codes(rng):
    return {"utt1": rng.integers(0, 1024, (8, 7)), "utt2": rng.integers(0, 1024, (8, 1)),
            "utt3": rng.integers(0, 1024, (8, 40))}


@pytest.mark.parametrize("target", ["codes.scp", "codes.ark", "npydir"])
def test_codes_round_trip(tmp_path, target):
    codes = _some_codes(np.random.default_rng(0))
    out = str(tmp_path / target)
    write_codes(out, codes)
    back = read_codes(out)
    assert list(back) == list(codes)
    for utt in codes:
        assert back[utt].dtype == np.int64
        np.testing.assert_array_equal(back[utt], codes[utt])
    if target != "npydir":
        import kaldiio

        # plain kaldiio reads it too: a float matrix (nq, T) with the exact integers
        mat = kaldiio.load_scp(str(tmp_path / "codes.scp"))["utt1"]
        assert mat.shape == (8, 7)
        np.testing.assert_array_equal(mat, codes["utt1"])
        assert sorted(os.listdir(tmp_path)) == ["codes.ark", "codes.scp"]
    else:
        assert sorted(os.listdir(out)) == ["utt1.npy", "utt2.npy", "utt3.npy"]


def test_interrupted_kaldi_write_leaves_no_scp(tmp_path):
    out = str(tmp_path / "codes.scp")
    with pytest.raises(RuntimeError):
        with CodesWriter(out) as w:
            w.write("u1", np.zeros((8, 3), dtype=np.int64))
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    # while writing (not closed yet), no codes.scp exists either
    w = CodesWriter(out)
    w.write("u1", np.zeros((8, 3), dtype=np.int64))
    assert not os.path.exists(out)
    w.close()
    assert os.path.exists(out)


def test_codes_errors(tmp_path):
    with pytest.raises(CodesError, match="'bad'.*\\(nq, T\\)"):
        with CodesWriter(str(tmp_path / "d")) as w:
            w.write("bad", np.zeros(5, dtype=np.int64))
    with pytest.raises(CodesError, match="integers"):
        with CodesWriter(str(tmp_path / "d")) as w:
            w.write("f", np.zeros((2, 2), dtype=np.float32))
    np.save(tmp_path / "d" / "x.npy", np.full((2, 3), 0.5))
    with pytest.raises(CodesError, match="x.npy.*non-integer"):
        CodesReader(str(tmp_path / "d"))["x"]
    scp = tmp_path / "c.scp"
    scp.write_text("u1 nowhere.ark:12\n")
    with pytest.raises(CodesError, match="c.scp: utterance 'u1': cannot read"):
        CodesReader(str(scp))["u1"]
    with pytest.raises(CodesError, match="not a codes"):
        CodesReader(str(tmp_path / "codes.txt"))
