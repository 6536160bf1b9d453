"""Front end vs the official extractor (golden data from the official XY-Tokenizer code)."""


import numpy as np
import pytest
import soundfile as sf
import torch

from xytok.frontend import N_SAMPLES_30S, log_mel, mel_filters, utterance_log_mel
from golden import GOLDEN as _GOLDEN

GOLDEN = _GOLDEN
TINY = GOLDEN / "tiny_a"
# Low-energy mel bins differ from the official run at the 1e-5 level (FFT rounding): see
# golden README section 5, "1e-5 (mel / encoder side)".
MEL_ATOL = 5e-5


def _wav(name):
    wav, sr = sf.read(TINY / name, dtype="float32")
    assert sr == 16000
    return wav


def test_mel_filters_match_reference():
    ref = np.load(GOLDEN / "feature_extractor_reference.npz")
    ours = mel_filters()
    assert ours.shape == (201, 80)
    np.testing.assert_allclose(ours, ref["mel_filters_201x80_float64"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.astype(np.float32), ref["mel_filters_201x80_float32"])


def test_padded_equals_official_short():
    exp = np.load(TINY / "expected_short.npz")
    mel, mel_len = log_mel(torch.from_numpy(exp["input_wav"]), pad_to_30s=True)
    assert mel.shape == (1, 80, 3000) and mel.dtype == torch.float32
    assert mel_len.tolist() == exp["mel_lengths"].tolist()
    np.testing.assert_allclose(mel.numpy(), exp["input_features"], rtol=0, atol=MEL_ATOL)


def test_trimmed_equals_official_on_valid_and_boundary_frames():
    exp = np.load(TINY / "expected_short.npz")
    mel, mel_len = log_mel(torch.from_numpy(exp["input_wav"]))
    n = int(mel_len[0])
    assert mel.shape[2] == n + 2  # valid frames + the boundary frames
    np.testing.assert_allclose(mel.numpy(), exp["input_features"][:, :, : n + 2], rtol=0, atol=MEL_ATOL)


def test_batch_trimmed_equals_official():
    exp = np.load(TINY / "expected_batch.npz")
    w0, w1 = _wav("input_short.wav"), _wav("input_batch2.wav")
    x = torch.zeros(2, len(w0))
    x[0] = torch.from_numpy(w0)
    x[1, : len(w1)] = torch.from_numpy(w1)
    # garbage past the length must be ignored (treated as the official zero padding)
    x[1, len(w1):] = 0.3
    mel, mel_len = log_mel(x, [len(w0), len(w1)])
    assert mel_len.tolist() == exp["mel_lengths"].tolist()
    t = mel.shape[2]
    np.testing.assert_allclose(mel.numpy(), exp["input_features"][:, :, :t], rtol=0, atol=MEL_ATOL)


def test_utterance_log_mel_shape_and_values():
    exp = np.load(TINY / "expected_short.npz")
    feats = utterance_log_mel(exp["input_wav"])
    n = int(exp["mel_lengths"][0])
    assert feats.shape == (n, 80) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, exp["input_features"][0, :, :n].T, rtol=0, atol=MEL_ATOL)
    # an odd length (not a multiple of 160): ceil(N/160) frames
    assert utterance_log_mel(exp["input_wav"][:16001]).shape == (101, 80)


def test_utterance_log_mel_longer_than_30s_not_truncated():
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(N_SAMPLES_30S + 16000)).astype(np.float32)
    feats = utterance_log_mel(wav)
    assert feats.shape == (3100, 80)
    # the first part equals the 30-s analysis up to the per-item max (white noise: same max range)
    assert np.isfinite(feats).all()


def test_utterance_log_mel_bad_input():
    with pytest.raises(ValueError, match="empty"):
        utterance_log_mel(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        utterance_log_mel(np.array([0.0, np.nan] * 200, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        utterance_log_mel(np.zeros((2, 400), np.float32))


def test_tiny_input_does_not_crash():
    mel, mel_len = log_mel(torch.zeros(50))
    assert mel_len.tolist() == [1] and mel.shape[2] >= 1
    assert torch.isfinite(mel).all()
