"""Numerical equivalence with the official XY-Tokenizer on tiny_a (golden README sections 4-6)."""


import numpy as np
import pytest
import soundfile as sf
import torch

from xytok.codec import load_codec
from golden import TINY_A

TINY = TINY_A
FEAT_ATOL = 5e-5   # mel/encoder side (FFT rounding on low-energy bins, README section 5)
WAV_ATOL = 1e-4


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    return load_codec(TINY / "config.yaml", TINY / "model.ckpt")


def _wav(name):
    wav, sr = sf.read(TINY / name, dtype="float32")
    assert sr == 16000
    return torch.from_numpy(wav)


@pytest.fixture(scope="module")
def short():
    return np.load(TINY / "expected_short.npz")


@pytest.mark.parametrize("pad_to_30s", [True, False])
def test_short_tokenize_intermediates(codec, short, pad_to_30s):
    wav = torch.from_numpy(short["input_wav"])
    with torch.no_grad():
        mel, mel_len = codec.wav_to_mel(wav[None], torch.tensor([wav.numel()]), pad_to_30s=pad_to_30s)
        out = codec.tokenize(mel, mel_len)
    enc_len = int(short["semantic_encoder_output_length"][0])
    code_len = int(short["codes_lengths"][0])
    assert out["encoder_lengths"].tolist() == [enc_len]
    assert out["codes_lengths"].tolist() == [code_len]
    pairs = [("semantic_encoder_output", "semantic_encoder_output", enc_len),
             ("semantic", "semantic_encoder_adapter_output", enc_len),
             ("acoustic", "acoustic_encoder_output", enc_len),
             ("pre_rvq", "pre_rvq_adapter_output", enc_len),
             ("downsample_output", "downsample_output", code_len),
             ("zq", "zq", code_len)]
    for ours, theirs, n in pairs:
        np.testing.assert_allclose(out[ours][:, :, :n].numpy(), short[theirs][:, :, :n], rtol=0,
                                   atol=FEAT_ATOL, err_msg=ours)
    np.testing.assert_array_equal(out["codes"][:, :, :code_len].numpy(), short["codes"][:, :, :code_len])
    if pad_to_30s:  # the official padded computation also reproduces the padded frames
        assert out["codes"].shape[2] == 375
        np.testing.assert_array_equal(out["codes"].numpy(), short["codes"])
        np.testing.assert_allclose(out["zq"].numpy(), short["zq"], rtol=0, atol=FEAT_ATOL)


def test_short_detokenize(codec, short):
    with torch.no_grad():
        out = codec.detokenize(torch.from_numpy(short["detok_codes_in"]),
                               torch.from_numpy(short["detok_codes_lengths_in"]))
    np.testing.assert_allclose(out["mel_out"].numpy(), short["detok_acoustic_decoder_output"], rtol=0, atol=1e-5)
    assert out["wav_lengths"].tolist() == short["output_length"].tolist()
    np.testing.assert_allclose(out["wav"].numpy(), short["y"][:, 0], rtol=0, atol=WAV_ATOL)
    # the padded 375-frame decode differs in the tail only (Vocos sees the padded frames)
    with torch.no_grad():
        padded = codec.detokenize(torch.from_numpy(short["codes"]), torch.from_numpy(short["codes_lengths"]))
    n = int(short["detok_padded_output_length"][0])
    assert padded["wav"].shape[1] == int(short["detok_padded_y_total_samples"])
    np.testing.assert_allclose(padded["wav"][:, :n].numpy(), short["detok_padded_y_valid"][:, 0], rtol=0, atol=WAV_ATOL)


@pytest.mark.parametrize("mode", ["fast", "padded"])
def test_short_encode_decode_api(codec, short, mode):
    codes = codec.encode([torch.from_numpy(short["input_wav"])], mode=mode)
    assert len(codes) == 1 and codes[0].dtype == torch.long
    np.testing.assert_array_equal(codes[0].numpy(), short["encode_codes_list_0"])
    wav = codec.decode(codes, mode=mode)
    np.testing.assert_allclose(wav[0].numpy(), short["y"][0, 0], rtol=0, atol=WAV_ATOL)


def test_batch(codec):
    exp = np.load(TINY / "expected_batch.npz")
    w0, w1 = _wav("input_short.wav"), _wav("input_batch2.wav")
    x = torch.zeros(2, w0.numel())
    x[0], x[1, : w1.numel()] = w0, w1
    lens = exp["codes_lengths"].tolist()
    with torch.no_grad():
        for pad in (True, False):
            mel, mel_len = codec.wav_to_mel(x, torch.tensor([w0.numel(), w1.numel()]), pad_to_30s=pad)
            assert mel_len.tolist() == exp["mel_lengths"].tolist()
            out = codec.tokenize(mel, mel_len)
            assert out["codes_lengths"].tolist() == lens
            for j, n in enumerate(lens):
                np.testing.assert_array_equal(out["codes"][:, j, :n].numpy(), exp["codes"][:, j, :n])
        det = codec.detokenize(torch.from_numpy(exp["detok_codes_in"]), torch.from_numpy(exp["detok_codes_lengths_in"]))
    np.testing.assert_allclose(det["mel_out"].numpy(), exp["detok_acoustic_decoder_output"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(det["wav"].numpy(), exp["detok_y"][:, 0], rtol=0, atol=WAV_ATOL)
    # list API: codes as the official encode; padded decode = the official batch decode
    codes = codec.encode([w0, w1])
    for j, n in enumerate(lens):
        np.testing.assert_array_equal(codes[j].numpy(), exp["codes"][:, j, :n])
    wavs = codec.decode(codes, mode="padded")
    for j, n in enumerate(exp["detok_output_length"].tolist()):
        np.testing.assert_allclose(wavs[j].numpy(), exp["detok_y"][j, 0, :n], rtol=0, atol=WAV_ATOL)


def test_batch_fast_decode_equals_single_items(codec):
    w0, w1 = _wav("input_short.wav"), _wav("input_batch2.wav")
    codes = codec.encode([w0, w1])
    single = [codec.decode([c])[0] for c in codes]
    both = codec.decode(codes)
    for a, b in zip(single, both):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_long_chunked(codec):
    exp = np.load(TINY / "expected_long.npz")
    wav = _wav("input_long.wav")
    assert wav.numel() == int(exp["input_samples"]) > 480000
    codes = codec.encode([wav], overlap_seconds=int(exp["overlap_seconds"]))
    np.testing.assert_array_equal(codes[0].numpy(), exp["codes_list_0"])
    out = codec.decode(codes, overlap_seconds=int(exp["overlap_seconds"]))
    assert out[0].shape == exp["syn_wav_list_0"].shape
    np.testing.assert_allclose(out[0].numpy(), exp["syn_wav_list_0"], rtol=0, atol=WAV_ATOL)


def test_long_chunked_padded_reference_mode(codec):
    exp = np.load(TINY / "expected_long.npz")
    codes = codec.encode([_wav("input_long.wav")], mode="padded")
    np.testing.assert_array_equal(codes[0].numpy(), exp["codes_list_0"])
