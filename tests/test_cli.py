"""The xytok CLI on the tiny_a golden model: encode/decode round trips in both code formats,
bad inputs in a batch, bad codes, checkpoint mismatch, --help everywhere."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from xytok import cli
from xytok.io_codes import read_codes, write_codes
from golden import TINY_A

GOLDEN = str(TINY_A)
if not os.path.isdir(GOLDEN):
    GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden", "tiny_a")
CONFIG = os.path.join(GOLDEN, "config.yaml")
CKPT = os.path.join(GOLDEN, "model.ckpt")
MODEL = ["--config", CONFIG, "--checkpoint", CKPT, "--no_progress", "--num_threads", "1"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def codec():
    from xytok import load_codec

    torch.set_num_threads(1)
    return load_codec(CONFIG, CKPT)


@pytest.fixture(scope="module")
def speech():
    """Two real utterances, cut short to keep the test fast (lengths not multiples of 1280)."""
    a, sr = sf.read(os.path.join(GOLDEN, "input_short.wav"), dtype="float32")
    b, _ = sf.read(os.path.join(GOLDEN, "input_batch2.wav"), dtype="float32")
    assert sr == 16000
    return {"spk1-utt1": a[:40000], "spk1-utt2": b[:27000]}


@pytest.fixture()
def audio_dir(tmp_path, speech):
    d = tmp_path / "wavs"
    d.mkdir()
    for utt, wav in speech.items():
        sf.write(str(d / f"{utt}.wav"), wav, 16000, subtype="PCM_16")
    return d


def direct_codes(codec, speech):
    with torch.inference_mode():
        out = codec.encode([torch.from_numpy(w) for w in speech.values()])
    return {u: c.cpu().numpy() for u, c in zip(speech, out)}


def run(argv):
    return cli.main(list(map(str, argv)))


@pytest.mark.parametrize("out_name", ["codes.scp", "npy_codes"])
def test_encode_decode_round_trip(tmp_path, audio_dir, speech, codec, out_name):
    expected = direct_codes(codec, speech)
    # a wav.scp with a plain path and a pipe entry
    scp = tmp_path / "wav.scp"
    scp.write_text(f"spk1-utt1 {audio_dir}/spk1-utt1.wav\nspk1-utt2 cat {audio_dir}/spk1-utt2.wav |\n")
    for src, tag in ((audio_dir, "dir"), (scp, "scp")):
        out = tmp_path / tag / out_name
        assert run(["encode", *MODEL, "--batch_size", "2", src, out]) == 0
        got = read_codes(str(out))
        assert list(got) == list(speech)
        for utt, wav in speech.items():
            assert got[utt].shape == (4, len(wav) // 1280)
            np.testing.assert_array_equal(got[utt], expected[utt])

    out_dir = tmp_path / "dec"
    assert run(["decode", *MODEL, tmp_path / "scp" / out_name, out_dir]) == 0
    lines = (out_dir / "wav.scp").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == sorted(speech)
    with torch.inference_mode():
        ref = codec.decode([torch.from_numpy(expected[u]) for u in speech])
    for (utt, wav), ref_wav in zip(speech.items(), ref):
        path = lines[sorted(speech).index(utt)].split(maxsplit=1)[1]
        y, sr = sf.read(path, dtype="float32")
        assert sr == 16000 and len(y) == 1280 * (len(wav) // 1280)
        ref_np = np.clip(ref_wav.numpy(), -1, 1)
        assert np.max(np.abs(y - ref_np)) <= 1.0 / 32768 + 1e-6  # PCM_16 rounding only


def test_single_file_and_model_dir_and_resampled_input(tmp_path, speech, codec):
    from xytok.audio import load_audio

    model_dir = tmp_path / "export"
    model_dir.mkdir()
    os.symlink(CONFIG, model_dir / "config.yaml")
    os.symlink(CKPT, model_dir / "model.ckpt")
    # a 44.1 kHz stereo file: the CLI resamples + downmixes, codes equal encoding the loaded audio
    wav = speech["spk1-utt2"]
    from scipy.signal import resample_poly

    hi = resample_poly(wav, 441, 160).astype(np.float32)
    path = tmp_path / "stereo44k.flac"
    sf.write(str(path), np.stack([hi, hi * 0.5], axis=1), 44100, subtype="PCM_24")
    out = tmp_path / "one.ark"
    assert run(["encode", "--model_dir", model_dir, "--no_progress", path, out]) == 0
    got = read_codes(str(tmp_path / "one.scp"))
    loaded, info = load_audio(str(path))
    assert info.resampled and info.downmixed
    with torch.inference_mode():
        ref = codec.encode([torch.from_numpy(loaded)])[0].numpy()
    np.testing.assert_array_equal(got["stereo44k"], ref)


def test_bad_files_in_batch_are_reported_and_others_written(tmp_path, audio_dir, speech, codec, caplog):
    (audio_dir / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt not really" * 20)
    sf.write(str(audio_dir / "empty.wav"), np.zeros(0, np.float32), 16000)
    sf.write(str(audio_dir / "short.wav"), np.zeros(1000, np.float32), 16000)
    nan = np.array(speech["spk1-utt2"])
    nan[100] = np.nan
    sf.write(str(audio_dir / "nan.wav"), nan, 16000, subtype="FLOAT")
    out = tmp_path / "codes.scp"
    with caplog.at_level(logging.INFO):
        rc = run(["encode", *MODEL, "--batch_size", "3", audio_dir, out])
    assert rc == 1
    got = read_codes(str(out))
    assert list(got) == list(speech)  # the good ones survive, in order
    expected = direct_codes(codec, speech)
    for utt in speech:
        np.testing.assert_array_equal(got[utt], expected[utt])
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "4 utterance(s) failed" in errors
    for name, why in [("corrupt.wav", "cannot read"), ("empty.wav", "empty"),
                      ("short.wav", "too short: 1000 samples"), ("nan.wav", "NaN/Inf")]:
        assert any(name in ln and why in ln for ln in errors.splitlines()), (name, errors)


def test_bad_codes_are_reported_and_others_decoded(tmp_path, caplog):
    rng = np.random.default_rng(0)
    codes = {"a_good": rng.integers(0, 64, (4, 3)), "b_range": np.full((4, 2), 64),
             "c_nq": rng.integers(0, 64, (8, 2)), "d_good": rng.integers(0, 64, (4, 1))}
    write_codes(str(tmp_path / "codes.scp"), codes)
    out_dir = tmp_path / "dec"
    with caplog.at_level(logging.INFO):
        rc = run(["decode", *MODEL, "--batch_size", "4", tmp_path / "codes.scp", out_dir])
    assert rc == 1
    assert sorted(os.listdir(out_dir)) == ["a_good.wav", "d_good.wav", "wav.scp"]
    assert [ln.split()[0] for ln in (out_dir / "wav.scp").read_text().splitlines()] == ["a_good", "d_good"]
    assert sf.info(str(out_dir / "a_good.wav")).frames == 3 * 1280
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "b_range" in errors and "out of range" in errors and "[0, 63]" in errors
    assert "c_nq" in errors and "nq=8, the model has 4" in errors


def test_checkpoint_mismatch_is_one_clear_error(tmp_path):
    state = torch.load(CKPT, map_location="cpu")
    state = state.get("generator", state)
    del state["semantic_encoder.conv1.bias"]
    bad = tmp_path / "bad.ckpt"
    torch.save({"generator": state}, bad)
    wav = tmp_path / "x.wav"
    sf.write(str(wav), np.zeros(3000, np.float32), 16000)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "xytok", "encode", "--config", CONFIG, "--checkpoint",
                           str(bad), str(wav), str(tmp_path / "c.scp")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "cannot load the model" in proc.stderr and str(bad) in proc.stderr
    assert "semantic_encoder.conv1.bias" in proc.stderr  # the missing key is named
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c.scp").exists()


def test_missing_model_and_input_errors(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert run(["encode", tmp_path / "nope.wav", tmp_path / "c.scp"]) == 1
        assert run(["encode", "--config", CONFIG, tmp_path, tmp_path / "c.scp"]) == 1
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "input not found" in msgs and "no audio files found" in msgs


@pytest.mark.parametrize("argv", [["--help"], ["encode", "--help"], ["decode", "--help"], ["score", "--help"]])
def test_help_of_every_subcommand(argv):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "xytok", *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    if argv[0] in ("encode", "decode"):
        assert "--batch_size" in proc.stdout and "--model_dir" in proc.stdout


@pytest.mark.parametrize("module", ["xytok.bin.encode", "xytok.bin.decode"])
def test_module_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 0 and "--overlap_seconds" in proc.stdout


def test_unknown_and_unavailable_subcommands(monkeypatch, capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err
    monkeypatch.setitem(cli.SUBCOMMANDS, "future", ("xytok.bin.not_written_yet", "later"))
    assert cli.main(["future", "--help"]) == 2
    assert "module xytok.bin.not_written_yet is not part of this installation" in capsys.readouterr().err


def test_long_file_matches_official_golden_codes(tmp_path):
    """45 s clip (chunked: 30 s windows, 10 s look-ahead) through the CLI = the official encode/decode."""
    expected = np.load(os.path.join(GOLDEN, "expected_long.npz"))
    src = tmp_path / "in"
    src.mkdir()
    os.symlink(os.path.join(GOLDEN, "input_long.wav"), src / "long.wav")
    assert run(["encode", *MODEL, src, tmp_path / "codes"]) == 0
    codes = np.load(tmp_path / "codes" / "long.npy")
    np.testing.assert_array_equal(codes, expected["codes_list_0"])
    assert run(["decode", *MODEL, tmp_path / "codes", tmp_path / "wav"]) == 0
    y, _ = sf.read(str(tmp_path / "wav" / "long.wav"), dtype="float32")
    ref = np.clip(expected["syn_wav_list_0"], -1, 1)
    assert y.shape == ref.shape
    assert np.max(np.abs(y - ref)) <= 1.0 / 32768 + 1e-4  # PCM_16 rounding + the 1e-4 model tolerance
