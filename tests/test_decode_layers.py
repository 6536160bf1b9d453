"""Decoding from the first n RVQ layers (codec.decode(..., num_quantizers=n), xytok decode --num_quantizers)
on the tiny_a golden model (4 layers x 64 codes)."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from golden import TINY_A

CONFIG = str(TINY_A / "config.yaml")
CKPT = str(TINY_A / "model.ckpt")


@pytest.fixture(scope="module")
def codec():
    from xytok.codec import load_codec

    torch.set_num_threads(1)
    return load_codec(CONFIG, CKPT)


@pytest.fixture(scope="module")
def short():
    return np.load(TINY_A / "expected_short.npz")


def _codes(short):
    return torch.from_numpy(short["encode_codes_list_0"])  # (nq, T) of the released encode


def _expected_zq(codec, codes, n):
    """The RVQ's per-layer decode, written out: sum of the first n layers' codewords (each through
    its own out_project), then the shared output_proj."""
    q = codec.quantizer
    emb = sum(q.quantizers[i].out_project(q.quantizers[i].decode_code(codes[i])) for i in range(n))
    return q.output_proj(emb)


def test_all_layers_is_bit_exact(codec, short):
    codes = _codes(short)
    nq = codec.num_quantizers
    default = codec.decode([codes])[0]
    explicit = codec.decode([codes], num_quantizers=nq)[0]
    assert torch.equal(default, explicit)
    # and equal to the golden detokenize output of these codes (the released model)
    ref = torch.from_numpy(short["y"]).reshape(-1)
    assert torch.allclose(default[: ref.numel()], ref, atol=1e-4)
    zq = codec.decode_codes(torch.from_numpy(short["detok_codes_in"]), num_quantizers=nq)
    assert torch.equal(zq, codec.decode_codes(torch.from_numpy(short["detok_codes_in"])))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_fewer_layers_drop_later_contributions(codec, short, n):
    codes = _codes(short)
    with torch.no_grad():
        zq = codec.decode_codes(codes[:, None], num_quantizers=n)
        expected_zq = _expected_zq(codec, codes[:, None], n)
        assert torch.equal(zq, expected_zq)
        # independent check against the reference's per-layer quantized vectors (encode side)
        all_q = torch.from_numpy(short["quantizer_all_quantized"])[:n, :, :, : codes.shape[1]]
        ref_zq = codec.quantizer.output_proj(all_q.sum(0))
        assert torch.allclose(zq, ref_zq, atol=1e-4)
        lengths = torch.tensor([codes.shape[1]])
        expected_wav = codec.detokenize_from_zq(expected_zq, lengths)["wav"][0]
    wav = codec.decode([codes], num_quantizers=n)[0]
    assert wav.numel() == codes.shape[1] * 1280
    assert torch.allclose(wav, expected_wav, atol=1e-6)
    # codes holding exactly n rows decode the same as nq rows cut to n
    assert torch.equal(wav, codec.decode([codes[:n]], num_quantizers=n)[0])
    # dropping layers really changes the output
    assert not torch.allclose(wav, codec.decode([codes])[0], atol=1e-4)
    # padded (official batch) mode agrees on a single item
    assert torch.allclose(codec.decode([codes], num_quantizers=n, mode="padded")[0], wav, atol=1e-5)


def test_bad_num_quantizers(codec, short):
    codes = _codes(short)
    nq = codec.num_quantizers
    for bad in (0, nq + 1, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"num_quantizers must be an integer in \[1, 4\]"):
            codec.decode([codes], num_quantizers=bad)
    with pytest.raises(ValueError, match=r"item 1: codes have 1 quantizer rows.*needs 2\.\.4"):
        codec.decode([codes, codes[:1]], num_quantizers=2)
    with pytest.raises(ValueError, match="num_quantizers=3 needs codes"):
        codec.decode_codes(codes[:2, None], num_quantizers=3)
    # without num_quantizers a cut code matrix is still an error (the model's nq is expected)
    with pytest.raises(ValueError, match="item 0: codes have 2 quantizer rows"):
        codec.decode([codes[:2]])


def test_bitrate(codec):
    assert codec.frame_rate == 12.5
    assert codec.bitrate() == 4 * 6 * 12.5  # 4 layers x log2(64) bits x 12.5 Hz
    assert codec.bitrate(1) == 75.0


def test_cli_num_quantizers(tmp_path, short, caplog):
    from xytok.bin import decode as decode_bin
    from xytok.io_codes import write_codes

    codes = short["encode_codes_list_0"]
    write_codes(str(tmp_path / "codes.scp"), {"u1": codes, "u2": codes[:2], "u3": codes[:, :20]})
    common = ["--config", CONFIG, "--checkpoint", CKPT, "--no_progress", "--num_threads", "1"]
    with caplog.at_level("INFO"):
        rc = decode_bin.main(common + ["--num_quantizers", "2", str(tmp_path / "codes.scp"), str(tmp_path / "nq2")])
    assert rc == 0
    assert "2 of 4 RVQ layers" in caplog.text and "150 bps" in caplog.text
    from xytok.codec import load_codec

    codec = load_codec(CONFIG, CKPT)
    want = codec.decode([torch.from_numpy(codes)], num_quantizers=2)[0].numpy()
    got, sr = sf.read(tmp_path / "nq2" / "u1.wav", dtype="float32")
    assert sr == 16000 and np.abs(got - want).max() < 2 / 32768  # 16-bit PCM
    assert sorted(os.listdir(tmp_path / "nq2")) == ["u1.wav", "u2.wav", "u3.wav", "wav.scp"]
    # u2 has only 2 rows: fine at n=2, an error naming it at the default (all layers)
    rc = decode_bin.main(common + [str(tmp_path / "codes.scp"), str(tmp_path / "all")])
    assert rc == 1
    assert "u2" in caplog.text and "wrong number of quantizers" in caplog.text
    assert sorted(os.listdir(tmp_path / "all")) == ["u1.wav", "u3.wav", "wav.scp"]
    caplog.clear()
    assert decode_bin.main(common + ["--num_quantizers", "5", str(tmp_path / "codes.scp"), str(tmp_path / "x")]) == 1
    assert "--num_quantizers 5: the model has 4 RVQ layers" in caplog.text
    with pytest.raises(SystemExit):  # argparse: not a positive integer
        decode_bin.main(common + ["--num_quantizers", "0", str(tmp_path / "codes.scp"), str(tmp_path / "x")])
