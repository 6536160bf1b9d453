"""xytok.codecs: the xcodec2, speechtokenizer and bigcodec families on tiny random models saved
locally in each family's released format (no download): shapes, BPS from the codes, round trip,
probe embedding, --num_quantizers, and `python -m xytok.codecs FAMILY:DIR`."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xytok.codecs import CodecSpecError, load_codec_family

REPO = Path(__file__).resolve().parent.parent


def save_tiny_xcodec2(d: Path) -> Path:
    """X-Codec 2.0 at 16 kHz, hop 320 (50 Hz), FSQ levels [4, 4, 4] (one codebook of 64), a
    one-layer Wav2Vec2-BERT semantic encoder."""
    from transformers import Wav2Vec2BertConfig, Xcodec2Config, Xcodec2Model

    torch.manual_seed(0)
    semantic = Wav2Vec2BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                  output_hidden_size=16, conv_depthwise_kernel_size=3)
    cfg = Xcodec2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, head_dim=16, encoder_hidden_size=4,
                        downsampling_ratios=[2, 2, 4, 4, 5], semantic_model_config=semantic.to_dict(),
                        quantization_dim=48, quantization_levels=[4, 4, 4])
    Xcodec2Model(cfg).save_pretrained(d)
    return d


def _wav(seconds, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("codecs_more")
    return {"xcodec2": str(save_tiny_xcodec2(root / "xcodec2"))}


# family -> (sample rate, frame rate, default nq, codebook size, embedding dim)
EXPECTED = {"xcodec2": (16000, 50.0, 1, 64, 48)}


@pytest.mark.parametrize("family", ["xcodec2"])
def test_family_interface(models, family):
    torch.set_num_threads(1)
    codec = load_codec_family(f"{family}:{models[family]}")
    sr, fr, nq, k, dim = EXPECTED[family]
    assert (codec.family, codec.sample_rate, codec.frame_rate, codec.num_quantizers) == (family, sr, fr, nq)
    assert codec.codebook_sizes == [k] * nq
    assert codec.bps() == pytest.approx(nq * math.log2(k) * fr)
    wavs = [_wav(1.0, sr), _wav(0.53, sr, seed=1)]
    codes = codec.encode(wavs)
    for w, c in zip(wavs, codes):
        assert c.dtype == torch.long and c.shape[0] == nq
        assert abs(c.shape[1] - len(w) / codec.hop_length) <= 1
        assert int(c.min()) >= 0 and int(c.max()) < k
    assert torch.equal(codec.encode([wavs[1]])[0], codes[1])
    out = codec.decode(codes)
    for c, y in zip(codes, out):
        assert y.dim() == 1 and y.numel() == c.shape[1] * codec.hop_length and torch.isfinite(y).all()
    assert codec.encode([out[0].numpy()])[0].shape[0] == nq
    emb = codec.embed(wavs[0])
    assert emb.shape == (codes[0].shape[1], dim) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert codec.describe()["bps"] == pytest.approx(codec.bps())
    with pytest.raises(ValueError, match="out of range"):
        codec.decode([torch.full((nq, 5), k)])
    # the spec CLI the recipe calls
    r = subprocess.run([sys.executable, "-m", "xytok.codecs", f"{family}:{models[family]}"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split()[0] == family and r.stdout.split()[2] == models[family]


def test_xcodec2_frames_follow_the_codes_mask(models):
    """1.0 s -> 50 frames (the model emits 51: the extractor appends a sample and pads to the hop;
    its codes mask marks 50 valid); 0.5 s - 1 sample -> 25 (the appended sample completes frame 25)."""
    codec = load_codec_family(f"xcodec2:{models['xcodec2']}")
    assert [c.shape[1] for c in codec.encode([_wav(1.0), _wav(0.5)[:-1], _wav(0.5)[:-2]])] == [50, 25, 24]
    with pytest.raises(CodecSpecError, match="--num_quantizers 2 not supported"):
        load_codec_family(f"xcodec2:{models['xcodec2']}", num_quantizers=2)


def test_xcodec2_fbank_matches_the_reference_extractor(models):
    """Our numpy fbank equals what the original X-Codec 2.0 feeds its semantic encoder:
    SeamlessM4TFeatureExtractor on the hop-padded audio with hop/2 zeros each side."""
    from transformers import SeamlessM4TFeatureExtractor

    codec = load_codec_family(f"xcodec2:{models['xcodec2']}")
    wav = torch.from_numpy(_wav(0.7, seed=3))
    _, feats, _ = codec._model_inputs(wav)
    hop = codec.hop_length
    padded = np.pad(wav.numpy(), (0, math.ceil((wav.numel() + 1) / hop) * hop - wav.numel()))
    ref = SeamlessM4TFeatureExtractor()(np.pad(padded, (hop // 2, hop // 2)), sampling_rate=16000,
                                        return_tensors="np")["input_features"]
    assert feats.shape == ref.shape == (1, padded.size // hop, 160)
    np.testing.assert_allclose(feats.numpy(), ref, atol=2e-3)
