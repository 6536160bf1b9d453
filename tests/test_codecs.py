"""xytok.codecs: every family behind one interface, on tiny random models saved locally
(transformers' save_pretrained; no download): shapes, BPS, round trip, probe embedding,
--num_quantizers, and the spec parser's errors."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from golden import TINY_A  # noqa: E402

from xytok.codecs import CodecSpecError, load_codec_family, parse_spec, spec_label  # noqa: E402


def save_tiny_dac(d: Path) -> Path:
    """DAC at 16 kHz, hop 320 (50 Hz), 4 codebooks of 64."""
    from transformers import DacConfig, DacModel

    torch.manual_seed(0)
    cfg = DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4, 5, 8], decoder_hidden_size=32,
                    n_codebooks=4, codebook_size=64, codebook_dim=4, hidden_size=32, sampling_rate=16000)
    DacModel(cfg).save_pretrained(d)
    return d


def save_tiny_mimi(d: Path) -> Path:
    """Mimi at 24 kHz, 12.5 Hz, 8 codebooks of 64 (1 semantic)."""
    from transformers import MimiConfig, MimiModel

    torch.manual_seed(0)
    cfg = MimiConfig(sampling_rate=24000, frame_rate=12.5, hidden_size=32, num_filters=4, num_residual_layers=1,
                     upsampling_ratios=[8, 6, 5, 4], num_quantizers=8, num_semantic_quantizers=1,
                     codebook_size=64, codebook_dim=16, vector_quantization_hidden_dimension=16,
                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                     intermediate_size=64, sliding_window=50, max_position_embeddings=1000, upsample_groups=32)
    MimiModel(cfg).save_pretrained(d)
    return d


def save_tiny_encodec(d: Path) -> Path:
    """EnCodec at 24 kHz, 75 Hz, codebooks of 64; bandwidths 0.9/1.8 kbps -> 2/4 codebooks."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    cfg = EncodecConfig(target_bandwidths=[0.9, 1.8], sampling_rate=24000, hidden_size=16, num_filters=4,
                        num_residual_layers=1, upsampling_ratios=[8, 5, 4, 2], codebook_size=64, codebook_dim=16,
                        num_lstm_layers=1)
    EncodecModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("codecs")
    return {"dac": str(save_tiny_dac(root / "dac")), "mimi": str(save_tiny_mimi(root / "mimi")),
            "encodec": str(save_tiny_encodec(root / "encodec")), "xy": str(TINY_A)}


# family -> (sample rate, frame rate, default nq, codebook size)
EXPECTED = {"dac": (16000, 50.0, 4, 64), "mimi": (24000, 12.5, 8, 64), "encodec": (24000, 75.0, 2, 64),
            "xy": (16000, 12.5, 4, 64)}


def _wav(seconds, sr, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("family", ["xy", "dac", "mimi", "encodec"])
def test_family_interface(models, family):
    torch.set_num_threads(1)
    codec = load_codec_family(f"{family}:{models[family]}")
    sr, fr, nq, k = EXPECTED[family]
    assert (codec.family, codec.sample_rate, codec.frame_rate, codec.num_quantizers) == (family, sr, fr, nq)
    assert codec.codebook_sizes == [k] * nq
    assert codec.bps() == pytest.approx(nq * math.log2(k) * fr)
    wavs = [_wav(1.0, sr), _wav(0.5, sr, seed=1)]
    codes = codec.encode(wavs)
    for w, c in zip(wavs, codes):
        assert c.dtype == torch.long and c.shape[0] == nq
        # one frame per hop, up to the codec's edge rounding (floor for xy/dac, ceil for mimi)
        assert abs(c.shape[1] - len(w) / codec.hop_length) <= 1
        assert int(c.min()) >= 0 and int(c.max()) < k
    # deterministic, and one item alone gives the batch's codes
    assert torch.equal(codec.encode([wavs[1]])[0], codes[1])
    out = codec.decode(codes)
    for c, y in zip(codes, out):
        assert y.dim() == 1 and y.numel() == c.shape[1] * codec.hop_length and torch.isfinite(y).all()
    # re-encoding the decoded audio runs (random weights: no quality claim)
    assert codec.encode([out[0].numpy()])[0].shape[0] == nq
    emb = codec.embed(wavs[0])
    assert emb.ndim == 2 and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert abs(emb.shape[0] - codes[0].shape[1]) <= 1 and emb.shape[1] > 1
    d = codec.describe()
    assert d["bps"] == pytest.approx(codec.bps()) and d["family"] == family


@pytest.mark.parametrize("family,n,ok", [("dac", 2, True), ("dac", 5, False), ("mimi", 4, True),
                                          ("mimi", 9, False), ("encodec", 4, True), ("encodec", 3, False),
                                          ("xy", 2, True)])
def test_num_quantizers(models, family, n, ok):
    spec = f"{family}:{models[family]}"
    if not ok:
        with pytest.raises(CodecSpecError, match=f"--num_quantizers {n} not supported"):
            load_codec_family(spec, num_quantizers=n)
        return
    codec = load_codec_family(spec, num_quantizers=n)
    sr, fr, _, k = EXPECTED[family]
    assert codec.num_quantizers == n and codec.bps() == pytest.approx(n * math.log2(k) * fr)
    c = codec.encode([_wav(0.5, sr)])[0]
    assert c.shape[0] == n
    y = codec.decode([c])[0]
    assert y.numel() == c.shape[1] * codec.hop_length
    other = load_codec_family(spec).encode([_wav(0.5, sr)])[0]
    # residual VQ: the shorter stream is a prefix of the longer one
    m = min(n, other.shape[0])
    assert torch.equal(other[:m], c[:m])


def test_decode_rejects_bad_codes(models):
    codec = load_codec_family(f"dac:{models['dac']}")
    with pytest.raises(ValueError, match="out of range"):
        codec.decode([torch.full((4, 10), 64)])
    with pytest.raises(ValueError, match="nq=5"):
        codec.decode([torch.zeros(5, 10, dtype=torch.long)])
    with pytest.raises(ValueError, match="shorter than one code frame"):
        codec.encode([np.zeros(100, np.float32)])


def test_spec_parsing(tmp_path):
    assert parse_spec("dac:some/dir") == ("dac", "some/dir")
    assert parse_spec("fdugyt/XY_Tokenizer") == ("xy", "fdugyt/XY_Tokenizer")
    assert parse_spec("exp/stage1_x") == ("xy", "exp/stage1_x")
    assert parse_spec("xy:released") == ("xy", "released")
    assert spec_label("mimi:kyutai/mimi") == "mimi_mimi"
    assert spec_label("xy:exp/stage2_a/export") == "xy_stage2_a"
    with pytest.raises(CodecSpecError, match="unknown codec family 'foo'"):
        parse_spec("foo:bar")
    with pytest.raises(CodecSpecError, match="no config.json"):
        load_codec_family(f"dac:{tmp_path}")


# ----------------------------------------------------------------------------- xytok encode/decode
def _write_wavs(d: Path, sr: int, n: int = 2) -> Path:
    import soundfile as sf

    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(d / f"utt{i}.wav", _wav(0.6 + 0.3 * i, sr, seed=i), sr)
    return d


@pytest.mark.parametrize("family,nq_arg,nq", [("mimi", [], 8), ("dac", ["--num_quantizers", "2"], 2),
                                               ("xy", ["--num_quantizers", "3"], 3)])
def test_cli_encode_decode_family(models, tmp_path, family, nq_arg, nq):
    import soundfile as sf

    from xytok.bin import decode, encode
    from xytok.io_codes import read_codes

    # 16 kHz input for every family: encode resamples to the codec's rate
    wavs = _write_wavs(tmp_path / "in", 16000)
    spec = f"{family}:{models[family]}"
    assert encode.main([str(wavs), str(tmp_path / "codes.scp"), "--model", spec, "--no_progress"] + nq_arg) == 0
    codes = read_codes(str(tmp_path / "codes.scp"))
    codec = load_codec_family(spec)
    assert sorted(codes) == ["utt0", "utt1"]
    for i, (utt, c) in enumerate(sorted(codes.items())):
        n_at_codec_rate = round((0.6 + 0.3 * i) * codec.sample_rate)
        assert c.shape[0] == nq and abs(c.shape[1] - n_at_codec_rate / codec.hop_length) <= 1
    assert decode.main([str(tmp_path / "codes.scp"), str(tmp_path / "out"), "--model", spec, "--no_progress"]
                       + nq_arg) == 0
    for utt, c in codes.items():
        y, sr = sf.read(tmp_path / "out" / f"{utt}.wav")
        assert sr == codec.sample_rate and len(y) == c.shape[1] * codec.hop_length
    assert len((tmp_path / "out" / "wav.scp").read_text().splitlines()) == 2


def test_cli_family_errors(models, tmp_path, caplog):
    from xytok.bin import encode

    wavs = _write_wavs(tmp_path / "in", 16000, n=1)
    out = str(tmp_path / "codes.scp")
    assert encode.main([str(wavs), out, "--model", "nope:x"]) == 1
    assert "unknown codec family 'nope'" in caplog.text
    assert encode.main([str(wavs), out, "--model", f"dac:{models['dac']}", "--num_quantizers", "9"]) == 1
    assert "--num_quantizers 9 not supported" in caplog.text
    assert encode.main([str(wavs), out, "--model", f"dac:{models['dac']}", "--model_dir", "x"]) == 1
    assert "--model_dir is for xy models" in caplog.text


def test_probe_takes_a_codec(models, tmp_path):
    """xytok.bin.probe --codec FAMILY:DIR: features from the family's embed (at its rate, repeated
    to ~50 Hz), a WER in probe.json, and the codec's facts recorded."""
    import json

    import soundfile as sf

    from xytok.bin.probe import main

    for name, n in (("train", 6), ("valid", 2)):
        d = tmp_path / name
        d.mkdir()
        scp, text = [], []
        for i in range(n):
            p = d / f"{name}{i}.wav"
            sf.write(p, _wav(0.8, 16000, seed=i), 16000)
            scp.append(f"{name}{i} {p}\n")
            text.append(f"{name}{i} HELLO WORLD\n")
        (d / "wav.scp").write_text("".join(scp))
        (d / "text").write_text("".join(text))
    for family, up in (("mimi", 4), ("dac", 1)):
        out = tmp_path / f"probe_{family}"
        assert main(["--codec", f"{family}:{models[family]}", "--train_data", str(tmp_path / "train"),
                     "--valid_data", str(tmp_path / "valid"), "--out", str(out), "--hidden", "8",
                     "--epochs", "1"]) == 0
        res = json.loads((out / "probe.json").read_text())
        assert 0 <= res["wer"] and res["n_valid"] == 2 and res["probe_config"]["upsample"] == up
        assert res["codec"]["family"] == family and f"repeated x{up}" in res["features"]
        from xytok.eval.probe import load_items

        feats = dict(load_items(out / "feats" / "valid"))
        codec = load_codec_family(f"{family}:{models[family]}")
        want = codec.embed(_wav(0.8, codec.sample_rate, seed=0))
        assert feats["valid0"].shape[1] == want.shape[1]


def test_xy_embed_is_the_probe_feature(models):
    """xy's embed() is exactly the probe's z_q feature (codec windowing + decode_codes)."""
    from xytok.eval.probe import extract_zq

    codec = load_codec_family(f"xy:{models['xy']}")
    w = _wav(2.5, 16000)
    np.testing.assert_array_equal(codec.embed(w), extract_zq(codec.codec, w))
    two = load_codec_family(f"xy:{models['xy']}", num_quantizers=2).embed(w)
    assert two.shape == codec.embed(w).shape and not np.allclose(two, codec.embed(w))


def test_spec_entry_point_and_codec_info(models, tmp_path, capsys):
    import json

    from xytok.bin import codec_info
    from xytok.codecs.__main__ import main as spec_main
    from xytok.io_codes import write_codes

    assert spec_main(["mimi:some/dir"]) == 0 and capsys.readouterr().out.split() == ["mimi", "mimi_dir", "some/dir"]
    assert spec_main(["bad:x"]) == 1 and "unknown codec family" in capsys.readouterr().err
    assert spec_main(["--help"]) == 0 and "dac" in capsys.readouterr().out
    # BPS is billed for the rows the codes hold: 2 of DAC's 4 codebooks of 64 at 50 Hz = 600 bps
    write_codes(str(tmp_path / "codes.scp"), {"a": np.zeros((2, 50), np.int64), "b": np.ones((2, 25), np.int64)})
    (tmp_path / "utt2num_samples").write_text("a 16000\nb 8000\n")
    out = tmp_path / "info.json"
    assert codec_info.main(["--model", f"dac:{models['dac']}", "--codes", str(tmp_path / "codes.scp"),
                            "--utt2num_samples", str(tmp_path / "utt2num_samples"), "--out", str(out)]) == 0
    info = json.loads(out.read_text())
    assert (info["num_quantizers"], info["bps"], info["measured_frame_rate"], info["n_utts"]) == (2, 600.0, 50.0, 2)
    write_codes(str(tmp_path / "mixed.scp"), {"a": np.zeros((2, 5), np.int64), "b": np.zeros((3, 5), np.int64)})
    assert codec_info.main(["--model", f"dac:{models['dac']}", "--codes", str(tmp_path / "mixed.scp"),
                            "--out", str(out)]) == 1
    assert "different numbers of rows" in capsys.readouterr().err


def test_cli_encode_shards_family(models, tmp_path):
    """--format shards with another codec: its codes, frame rate and sample rate in info.json."""
    import json

    from xytok.bin import encode
    from xytok.tokens import read_shards

    wavs = _write_wavs(tmp_path / "in", 16000)
    out = tmp_path / "tokens"
    assert encode.main([str(wavs), str(out), "--format", "shards", "--model", f"mimi:{models['mimi']}",
                        "--num_quantizers", "2", "--no_progress"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert (info["num_quantizers"], info["codebook_size"], info["frame_rate"], info["sample_rate"],
            info["codec_family"]) == (2, 64, 12.5, 24000, "mimi")
    got = {u: c for u, c, _ in read_shards(out)}
    codec = load_codec_family(f"mimi:{models['mimi']}", num_quantizers=2)
    import soundfile as sf

    from xytok.audio import load_audio

    w, _ = load_audio(str(wavs / "utt0.wav"), target_sr=24000)
    assert torch.equal(torch.as_tensor(got["utt0"]), codec.encode([w])[0])
    assert sf.info(wavs / "utt0.wav").samplerate == 16000
