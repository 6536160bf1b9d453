"""Fast path vs the official padded path on a second, differently-shaped config; chunking; bad input.

The config below differs from tiny_a in every size (d_model 48, 3 heads, 6 x 100 RVQ, ...) so that
nothing can depend on one particular checkpoint.
"""

import copy

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from xytok.codec import build_codec
from golden import GOLDEN as _GOLDEN

GOLDEN = _GOLDEN


def _config():
    cfg = yaml.safe_load((GOLDEN / "tiny_a" / "config.yaml").read_text())["generator_params"]
    cfg = copy.deepcopy(cfg)
    d = 48
    for key in ("semantic_encoder_kwargs", "acoustic_encoder_kwargs", "acoustic_decoder_kwargs"):
        cfg[key]["d_model"] = d
    for key in ("semantic_encoder_kwargs", "acoustic_encoder_kwargs"):
        cfg[key].update(encoder_layers=1, encoder_attention_heads=3, encoder_ffn_dim=80)
    cfg["acoustic_decoder_kwargs"].update(decoder_layers=1, decoder_attention_heads=3, decoder_ffn_dim=80)
    cfg["semantic_encoder_adapter_kwargs"].update(input_dim=d, output_dim=d, d_model=d, encoder_layers=1,
                                                  encoder_attention_heads=3, encoder_ffn_dim=80)
    cfg["pre_rvq_adapter_kwargs"].update(input_dim=2 * d, output_dim=d, d_model=d, encoder_layers=1,
                                         encoder_attention_heads=3, encoder_ffn_dim=80)
    cfg["downsample_kwargs"]["d_model"] = d
    cfg["quantizer_kwargs"].update(input_dim=4 * d, output_dim=4 * d, rvq_dim=24, codebook_dim=24,
                                   num_quantizers=6, codebook_size=100)
    cfg["post_rvq_adapter_kwargs"].update(input_dim=4 * d, output_dim=4 * d, d_model=d, encoder_layers=1,
                                          encoder_attention_heads=3, encoder_ffn_dim=80)
    cfg["upsample_kwargs"]["d_model"] = d
    cfg["vocos_kwargs"].update(dim=24, intermediate_dim=40, num_layers=3)
    return cfg


def _speech():
    wav, _ = sf.read(GOLDEN / "tiny_a" / "input_long.wav", dtype="float32")
    return torch.from_numpy(wav)


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    model = build_codec(_config())
    with torch.no_grad():  # perturb like the golden checkpoints, so no LN / bias is trivial
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.mul_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
    # k-means-initialise the codebooks the way training does (first train-mode batch)
    speech = _speech()
    batch = torch.stack([speech[i * 64000:(i + 1) * 64000] for i in range(6)])
    model.train()
    mel, mel_len = model.wav_to_mel(batch, torch.full((6,), 64000))
    model.tokenize(mel, mel_len)
    model.eval()
    assert all(bool(q.inited) for q in model.quantizer.quantizers)
    return model


def test_fast_equals_padded_varied_lengths_and_batch_vs_single(codec):
    speech = _speech()
    lengths = [1280, 1281, 2559, 16000 * 3 + 77, 113600, 160001]
    wavs = [speech[1000 * i: 1000 * i + n] for i, n in enumerate(lengths)]
    fast = codec.encode(wavs, batch_size=4)
    padded = codec.encode(wavs, mode="padded", batch_size=3)
    for n, f, p in zip(lengths, fast, padded):
        assert f.shape == (6, n // 1280)
        assert torch.equal(f, p), n
    for w, f in zip(wavs, fast):
        assert torch.equal(codec.encode([w])[0], f)
    # the codes are not degenerate
    assert all(len(torch.unique(row)) > 5 for row in fast[-1])


def test_fast_equals_padded_long_and_window_edges(codec):
    speech = _speech()
    for n in (480000 + 1279, 600001):
        f = codec.encode([speech[:n]])[0]
        p = codec.encode([speech[:n]], mode="padded")[0]
        assert f.shape == (6, n // 1280) and torch.equal(f, p), n


def test_encode_chunk_boundaries(codec):
    wav = _speech()[:700000]
    codes = codec.encode([wav])[0]  # chunks [0, 30 s), [20 s, 43.75 s), [40 s, ...)
    assert codes.shape == (6, 546)
    first = codec.encode([wav[:480000]])[0]
    second = codec.encode([wav[320000:]])[0]
    third = codec.encode([wav[640000:]])[0]
    assert torch.equal(codes[:, :250], first[:, :250])
    assert torch.equal(codes[:, 250:500], second[:, :250])
    assert torch.equal(codes[:, 500:], third)
    # no overlap: stride 30 s
    codes0 = codec.encode([wav], overlap_seconds=0)[0]
    assert torch.equal(codes0[:, :375], codec.encode([wav[:480000]], overlap_seconds=0)[0])
    assert torch.equal(codes0[:, :250], first[:, :250])
    # look-ahead context matters (otherwise the overlap would be pointless)
    assert not torch.equal(codes0[:, 375:], codes[:, 375:])


def test_decode_chunk_boundaries_and_modes(codec):
    codes = codec.encode([_speech()[:700000]])[0]
    wav = codec.decode([codes])[0]
    assert wav.shape == (546 * 1280,)
    first = codec.decode([codes[:, :375]])[0]
    second = codec.decode([codes[:, 250:]])[0]
    np.testing.assert_allclose(wav[:320000].numpy(), first[:320000].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(wav[320000:640000].numpy(), second[:320000].numpy(), rtol=0, atol=1e-6)
    padded = codec.decode([codes], mode="padded")[0]
    np.testing.assert_allclose(wav.numpy(), padded.numpy(), rtol=0, atol=1e-6)
    # batch independence of the fast decode; the padded batch decode changes the short item's tail
    short = codes[:, :40]
    alone = codec.decode([short])[0]
    batched = codec.decode([codes, short])[1]
    np.testing.assert_allclose(batched.numpy(), alone.numpy(), rtol=0, atol=1e-6)
    padded_batch = codec.decode([codes, short], mode="padded")[1]
    np.testing.assert_allclose(padded_batch[:-2000].numpy(), alone[:-2000].numpy(), rtol=0, atol=1e-6)
    assert (padded_batch[-2000:] - alone[-2000:]).abs().max() > 1e-6


def test_encode_bad_inputs_name_the_item(codec):
    good = torch.zeros(16000)
    cases = [
        (torch.zeros(0), "item 1: 0 samples is shorter than one code frame"),
        (torch.zeros(1279), "item 1: 1279 samples"),
        (torch.tensor([0.0, float("nan")] * 1000), "item 1: waveform contains NaN or Inf"),
        (torch.tensor([0.0, float("inf")] * 1000), "item 1: waveform contains NaN or Inf"),
        (torch.zeros(2, 16000), r"item 1: expected a 1-D waveform, got shape \(2, 16000\)"),
        (torch.zeros(16000, dtype=torch.int16), "item 1: expected float samples"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            codec.encode([good, bad])
    with pytest.raises(TypeError, match="list"):
        codec.encode(good)
    with pytest.raises(ValueError, match="overlap_seconds"):
        codec.encode([good], overlap_seconds=30)
    with pytest.raises(ValueError, match="80 ms"):
        codec.encode([good], overlap_seconds=10.01)
    with pytest.raises(ValueError, match="mode"):
        codec.encode([good], mode="slow")
    assert codec.encode([]) == []


def test_decode_bad_inputs_name_the_item(codec):
    good = torch.zeros(6, 10, dtype=torch.long)
    cases = [
        (torch.zeros(8, 10, dtype=torch.long), "item 1: codes have 8 quantizer rows, the model has 6"),
        (torch.zeros(10, 6, dtype=torch.long), "item 1: codes have 10 quantizer rows"),
        (torch.full((6, 10), 100), r"item 1: code values must be in \[0, 100\), got range \[100, 100\]"),
        (torch.full((6, 10), -1), r"item 1: code values must be in \[0, 100\)"),
        (torch.zeros(6, 10), "item 1: codes must be integers"),
        (torch.zeros(60, dtype=torch.long), r"item 1: codes must be \(nq, T\)"),
        (torch.zeros(6, 0, dtype=torch.long), "item 1: 0 code frames"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            codec.decode([good, bad])
    assert codec.decode([good])[0].shape == (12800,)
    assert codec.decode([np.zeros((6, 3), dtype=np.int64)])[0].shape == (3840,)


def test_long_input_memory_is_bounded_by_windows(codec, monkeypatch):
    speech = _speech()
    wav = torch.cat([speech, speech, speech])[:1_600_000]  # 100 s -> 5 windows (stride 20 s)
    reference = codec.encode([wav], batch_size=1)[0]
    calls = []
    original = codec.tokenize

    def spy(mel, mel_lengths):
        calls.append(tuple(mel.shape))
        return original(mel, mel_lengths)

    monkeypatch.setattr(codec, "tokenize", spy)
    codes = codec.encode([wav], batch_size=8, max_batch_seconds=60)[0]
    assert torch.equal(codes, reference)
    assert len(calls) == 3 and all(b * t <= 6000 for b, _, t in calls), calls
