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


def _summary(pesq):
    return {"n_utts": 2, "metrics": {"pesq_wb": {"mean": pesq, "ci95": [pesq - 0.1, pesq + 0.1],
                                                 "n_scored": 2, "n_failed": 0}}}


def test_results_one_row_per_num_quantizers(tmp_path):
    """make_results: score/ (all layers) and score_nq<n>/ (recipe --decode_num_quantizers) each give
    a row with the bit rate of the layers decoded; the probe WER only on the all-layer row."""
    import json

    from xytok.bin.make_results import main as make_main

    exp = tmp_path / "exp" / "tiny"
    (exp / "export").mkdir(parents=True)
    (exp / "export" / "config.yaml").write_text((TINY_A / "config.yaml").read_text())
    (exp / "probe").mkdir()
    (exp / "probe" / "probe.json").write_text(json.dumps({"wer": 0.5, "wer_counts": {"kaldi": "%WER 50"}}))
    for sub, pesq in (("score_nq4", 2.5), ("score_nq2", 1.7), ("score_nq1", 1.2)):
        (exp / "decode" / "test" / sub).mkdir(parents=True)
        (exp / "decode" / "test" / sub / "summary.json").write_text(json.dumps(_summary(pesq)))
    (exp / "decode" / "test" / "score_nq9").mkdir()  # more layers than the model: skipped
    (exp / "decode" / "test" / "score_nq9" / "summary.json").write_text(json.dumps(_summary(0.0)))
    assert make_main(["--recipe_dir", str(tmp_path), "--exp_dir", str(exp / "decode"), "--no_plots"]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")]
            for ln in md.splitlines() if ln.startswith("| tiny")}
    assert list(rows) == ["tiny, nq=4", "tiny, nq=2", "tiny, nq=1"]
    assert rows["tiny, nq=4"][1:4] == ["300", "12.5", "0.50"]   # 4 x 6 bits x 12.5 Hz; probe WER
    assert rows["tiny, nq=2"][1:4] == ["150", "12.5", "—"]      # probe ran on the full codes only
    assert rows["tiny, nq=1"][1] == "75" and rows["tiny, nq=1"][-3] == "1.20"  # PESQ-WB of its own dir
    assert "nq=9" not in md


def test_recipe_stages_8_9_per_num_quantizers(tmp_path):
    """egs/TEMPLATE/xytok.sh stages 7-9 with --decode_num_quantizers "4 2" on the golden model:
    one wav_nq<n>/ and score_nq<n>/ per n, and one RESULTS.md row each with its BPS."""
    import shutil

    from recipe_helpers import make_recipe, run

    rdir = make_recipe(tmp_path, "mini")
    model = rdir / "golden" / "export"
    model.mkdir(parents=True)
    for f in ("config.yaml", "model.ckpt"):
        shutil.copy2(TINY_A / f, model / f)
    test = rdir / "dump" / "raw" / "test"
    test.mkdir(parents=True)
    wavs = {"utt_a": TINY_A / "input_short.wav", "utt_b": TINY_A / "input_batch2.wav"}
    (test / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in wavs.items()))
    (test / "text").write_text("utt_a hello\nutt_b world\n")
    (test / ".done").touch()
    r = run("./xytok.sh --train_set tr --valid_set dev --test_sets test --stage 7 --stop_stage 9 "
            "--inference_model golden/export --decode_num_quantizers '4 2' --scoring_metrics stoi "
            "--nj 1 --inference_nj 1", rdir, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dec = rdir / "golden" / "decode" / "test"
    assert not (dec / "wav").exists()  # only the listed n
    for n in (4, 2):
        assert sorted((dec / f"wav_nq{n}" / "wav.scp").read_text().split()[::2]) == ["utt_a", "utt_b"]
        assert (dec / f"score_nq{n}" / "summary.json").is_file()
    log = (dec / "wav_nq2" / "logs" / "decode.1.log").read_text()
    assert "decoding from 2 of 4 RVQ layers: 150 bps" in log
    md = (rdir / "RESULTS.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| golden")]
    assert [r.split("|")[1:3] for r in rows] == [[" golden, nq=4 ", " 300 "], [" golden, nq=2 ", " 150 "]]
    # a bad list is refused before anything runs
    r = run("./xytok.sh --train_set tr --valid_set dev --test_sets test --stage 8 --stop_stage 8 "
            "--inference_model golden/export --decode_num_quantizers '4 x'", rdir, timeout=60)
    assert r.returncode != 0 and "--decode_num_quantizers" in r.stdout + r.stderr
