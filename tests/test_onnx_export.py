"""ONNX export of the golden tiny model: graph interface, windowed onnxruntime runtime, parity goal.

One export (through the CLI, with --parity) is shared by the module: the dynamo exporter takes
~20 s for the tiny model on 2 cores.
"""
import json
import logging

import numpy as np
import pytest
import torch

from golden import TINY_A

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e .[onnx])")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install -e .[onnx])")

from xytok.bin import onnx_parity  # noqa: E402
from xytok.cli import main as xytok_main  # noqa: E402
from xytok.codec import load_codec  # noqa: E402
from xytok.frontend import log_mel  # noqa: E402
from xytok.nn.vocos import ISTFT  # noqa: E402
from xytok.onnx_export import ISTFTConv, LogMelDFT, snr_db, speech_like  # noqa: E402
from xytok.onnx_runtime import OnnxCodec  # noqa: E402

SECONDS = [1, 3, 10, 30, 60]


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    return load_codec(TINY_A / "config.yaml", TINY_A / "model.ckpt")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    report = out / "report.json"
    rc = xytok_main(["export-onnx", "--model_dir", str(TINY_A), "--out", str(out), "--num_threads", "1",
                     "--parity", "--seconds", *map(str, SECONDS), "--wavs", str(TINY_A / "input_long.wav"),
                     "--json", str(report)])
    return out, rc, json.loads(report.read_text())


@pytest.fixture(scope="module")
def onnx_codec(export):
    return OnnxCodec(export[0], num_threads=1)


def test_export_files_and_meta(export, codec):
    out, rc, _ = export
    assert rc == 0
    meta = json.loads((out / "onnx_meta.json").read_text())
    assert meta["sample_rate"] == 16000 and meta["hop_samples"] == 1280
    assert meta["num_quantizers"] == codec.num_quantizers == 4
    assert meta["codebook_size"] == codec.codebook_size == 64
    assert meta["window_samples"] == 480000 and meta["window_codes"] == 375
    assert meta["overlap_seconds"] == 10.0 and meta["opset"] >= 17
    assert (out / "encoder.onnx").stat().st_size > 0 and (out / "decoder.onnx").stat().st_size > 0


def test_graph_interface(onnx_codec):
    (wav_in,), (codes_out,) = onnx_codec.encoder.get_inputs(), onnx_codec.encoder.get_outputs()
    assert (wav_in.name, wav_in.type) == ("wav", "tensor(float)")
    assert wav_in.shape[0] == 1 and isinstance(wav_in.shape[1], str)  # dynamic length
    assert (codes_out.name, codes_out.type) == ("codes", "tensor(int64)")
    (codes_in,), (wav_out,) = onnx_codec.decoder.get_inputs(), onnx_codec.decoder.get_outputs()
    assert (codes_in.name, codes_in.type) == ("codes", "tensor(int64)")
    assert codes_in.shape[0] == 4 and isinstance(codes_in.shape[1], str)
    assert (wav_out.name, wav_out.type) == ("wav", "tensor(float)")


def test_parity_report_meets_goal(export):
    _, _, report = export
    assert report["passed"] is True
    rows = {r["clip"]: r for r in report["clips"]}
    assert sorted(r["seconds"] for r in report["clips"]) == [1, 3, 10, 30, 45, 60]
    for row in rows.values():
        assert row["frames"] == int(row["seconds"] * 16000) // 1280
        assert row["codes_identical"] == 1.0, row
        assert row["snr_db"] == "inf" or row["snr_db"] >= 50.0, row


@pytest.mark.parametrize("n", [1280, 16000 * 3 + 77, 479900, 480000])
def test_dft_log_mel_matches_frontend(n):
    """The export's conv-DFT log-mel = frontend.log_mel(pad_to_30s=False) up to FFT rounding
    (the golden tests' feature tolerance)."""
    wav = torch.from_numpy(speech_like(n / 16000, seed=n))[None]
    ref, _ = log_mel(wav, pad_to_30s=False)
    out = LogMelDFT()(wav)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=0, atol=5e-5)


def test_conv_istft_matches_vocos_istft():
    istft = ISTFT(640, 160)
    g = torch.Generator().manual_seed(0)
    spec = torch.complex(torch.randn(2, 321, 37, generator=g), torch.randn(2, 321, 37, generator=g))
    ref = istft(spec)
    out = ISTFTConv(istft.window, 640, 160)(spec.real, spec.imag)
    assert out.shape == ref.shape == (2, 37 * 160)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=0, atol=1e-6 * float(ref.abs().max()))


@pytest.mark.parametrize("n", [1280, 1280 * 5 + 1000, 16000 * 7 + 3, 480000])
def test_single_window_lengths(codec, onnx_codec, n):
    """One graph call at odd lengths, up to a full 30-s window: shapes and codes as PyTorch."""
    wav = speech_like(n / 16000, seed=n)
    assert wav.size == n
    codes = onnx_codec.encode_window(wav)
    assert codes.dtype == np.int64 and codes.shape == (4, n // 1280)
    with torch.no_grad():  # one window = the first chunk of encode() with no overlap cut
        ref = codec.encode([torch.from_numpy(wav)], overlap_seconds=0)[0].numpy()
    np.testing.assert_array_equal(codes, ref)
    out = onnx_codec.decode_window(codes)
    assert out.dtype == np.float32 and out.shape == (1280 * (n // 1280),)
    ref_wav = codec.decode([torch.from_numpy(codes)], overlap_seconds=0)[0].numpy()
    assert snr_db(ref_wav, out) >= 50


def test_other_overlap_windowing(export, codec):
    """The runtime's windowing follows encode/decode for a non-default overlap (14 s) too."""
    oc = OnnxCodec(export[0], num_threads=1, overlap_seconds=14)
    wav = speech_like(52.3, seed=7)
    ref = codec.encode([torch.from_numpy(wav)], overlap_seconds=14)[0].numpy()
    codes = oc.encode(wav)
    np.testing.assert_array_equal(codes, ref)
    ref_wav = codec.decode([torch.from_numpy(ref)], overlap_seconds=14)[0].numpy()
    assert snr_db(ref_wav, oc.decode(codes)) >= 50
    # a different overlap gives different windows, hence different codes on this clip
    assert not np.array_equal(OnnxCodec(export[0], num_threads=1).encode(wav), codes)


def test_runtime_input_errors(onnx_codec):
    with pytest.raises(ValueError, match="1-D"):
        onnx_codec.encode(np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="shorter than one code frame"):
        onnx_codec.encode(np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        onnx_codec.encode(np.full(16000, np.nan, np.float32))
    with pytest.raises(ValueError, match=r"must be in \[0, 64\)"):
        onnx_codec.decode(np.full((4, 10), 64))
    with pytest.raises(ValueError, match=r"\(4, T\)"):
        onnx_codec.decode(np.zeros((8, 10), np.int64))
    with pytest.raises(ValueError, match="use encode"):
        onnx_codec.encode_window(np.zeros(480001, np.float32))
    with pytest.raises(ValueError, match="use decode"):
        onnx_codec.decode_window(np.zeros((4, 376), np.int64))
    with pytest.raises(FileNotFoundError, match="onnx_meta.json"):
        OnnxCodec(TINY_A)


def test_parity_goal_miss_exits_1(export, tmp_path):
    """The parity command (model given as --model DIR) fails when a clip misses the goal (here:
    an unreachable SNR)."""
    report = tmp_path / "p.json"
    rc = onnx_parity.main(["--onnx_dir", str(export[0]), "--model", str(TINY_A), "--seconds", "1",
                           "--min_snr_db", "1000", "--json", str(report)])
    assert rc == 1
    assert json.loads(report.read_text())["passed"] is False


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        xytok_main(["export-onnx", "--help"])
    assert e.value.code == 0
    assert "encoder.onnx" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        onnx_parity.main(["--help"])
    assert e.value.code == 0 and "identical codes" in capsys.readouterr().out


def test_bad_model_dir(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    missing = tmp_path / "no_model"
    assert xytok_main(["export-onnx", "--model_dir", str(missing), "--out", str(tmp_path / "o")]) == 1
    assert str(missing) in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert xytok_main(["export-onnx", "--model_dir", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert str(empty / "config.yaml") in caplog.text
    bad_wav = tmp_path / "bad.wav"
    bad_wav.write_bytes(b"not audio")
    assert xytok_main(["export-onnx", "--model_dir", str(TINY_A), "--out", str(tmp_path / "o"),
                       "--parity", "--wavs", str(bad_wav)]) == 1
    assert str(bad_wav) in caplog.text
    assert not (tmp_path / "o").exists()
