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


# tools/install.sh (the README's test command) installs the speechtokenizer package: its absence is a
# failure of the environment, reported, never a silent skip.
SPEECHTOKENIZER_MISSING = ("speechtokenizer package not installed: tools/install.sh installs it "
                           "(pip install --no-deps 'speechtokenizer>=1.0' einops)")


def save_tiny_speechtokenizer(d: Path) -> Path:
    """SpeechTokenizer in its released format (config.json + SpeechTokenizer.pt state dict): 16 kHz,
    strides 8*5*4*2 (50 Hz), 4 RVQ layers of 64 with random codewords (a fresh model's are zeros
    until k-means runs in training)."""
    from xytok.codecs.speechtokenizer import import_speechtokenizer_class

    cfg = {"n_filters": 4, "strides": [8, 5, 4, 2], "dimension": 16, "semantic_dimension": 8,
           "bidirectional": True, "dilation_base": 2, "residual_kernel_size": 3, "n_residual_layers": 1,
           "lstm_layers": 1, "activation": "ELU", "sample_rate": 16000, "codebook_size": 64, "n_q": 4}
    torch.manual_seed(0)
    state = import_speechtokenizer_class()(cfg).state_dict()
    for key in state:
        if key.endswith("_codebook.embed"):
            state[key] = torch.randn_like(state[key])
        elif key.endswith("_codebook.inited"):
            state[key].fill_(1)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save(state, d / "SpeechTokenizer.pt")
    return d


def save_tiny_bigcodec(d: Path) -> Path:
    """BigCodec in its released format: bigcodec.pt = {'CodecEnc', 'generator'} with old-style
    weight-norm keys (weight_g / weight_v) and the anti-aliasing filters stored under their original
    names (...downsample.lowpass.filter); a config.json shrinks the architecture (hop 200 = 80 Hz
    kept, one codebook of 64)."""
    from xytok.codecs.bigcodec import RELEASED, BigCodecDecoder, BigCodecEncoder

    small = {"ngf": 4, "rnn_num_layers": 1, "out_channels": 16, "upsample_initial_channel": 32,
             "codebook_size": 64, "codebook_dim": 4}

    def released_keys(module):
        state = {k.replace("parametrizations.weight.original0", "weight_g")
                 .replace("parametrizations.weight.original1", "weight_v"): v for k, v in module.state_dict().items()}
        for k, buf in module.named_buffers():
            if k.endswith(".upsample.filter"):
                state[k] = buf.clone()
            elif k.endswith(".downsample.filter"):
                state[k.replace(".downsample.filter", ".downsample.lowpass.filter")] = buf.clone()
        return state

    torch.manual_seed(0)
    cfg = dict(RELEASED, **small)
    d.mkdir(parents=True)
    torch.save({"CodecEnc": released_keys(BigCodecEncoder(cfg)), "generator": released_keys(BigCodecDecoder(cfg))},
               d / "bigcodec.pt")
    (d / "config.json").write_text(json.dumps(small))
    return d


def _wav(seconds, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("codecs_more")
    out = {"xcodec2": str(save_tiny_xcodec2(root / "xcodec2")), "bigcodec": str(save_tiny_bigcodec(root / "bigcodec"))}
    import importlib.util

    assert importlib.util.find_spec("speechtokenizer") is not None, SPEECHTOKENIZER_MISSING
    out["speechtokenizer"] = str(save_tiny_speechtokenizer(root / "speechtokenizer"))
    return out


# family -> (sample rate, frame rate, default nq, codebook size, embedding dim)
EXPECTED = {"xcodec2": (16000, 50.0, 1, 64, 48), "speechtokenizer": (16000, 50.0, 4, 64, 16),
            "bigcodec": (16000, 80.0, 1, 64, 16)}


@pytest.mark.parametrize("family", ["xcodec2", "speechtokenizer", "bigcodec"])
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


def test_speechtokenizer_layers(models, tmp_path):
    """--num_quantizers n keeps the first n RVQ layers (layer 0 = semantic): a prefix of the full
    stream, decodable alone; more layers than the model has is a CodecSpecError."""
    spec = f"speechtokenizer:{models['speechtokenizer']}"
    full = load_codec_family(spec).encode([_wav(0.5)])[0]
    for n in (1, 2):
        codec = load_codec_family(spec, num_quantizers=n)
        c = codec.encode([_wav(0.5)])[0]
        assert torch.equal(c, full[:n]) and codec.bps() == pytest.approx(n * 6 * 50.0)
        assert codec.decode([c])[0].numel() == c.shape[1] * 320
        assert codec.embed(_wav(0.5)).shape == (c.shape[1], 16)
    with pytest.raises(CodecSpecError, match="--num_quantizers 5 not supported"):
        load_codec_family(spec, num_quantizers=5)
    # a dir without the state dict, and a missing package, fail naming what is wrong
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CodecSpecError, match="expected one .pt state dict"):
        load_codec_family(f"speechtokenizer:{tmp_path}")


def test_speechtokenizer_missing_package_names_the_extra(monkeypatch):
    from xytok.codecs.speechtokenizer import import_speechtokenizer_class

    monkeypatch.setitem(sys.modules, "speechtokenizer", None)
    monkeypatch.setitem(sys.modules, "speechtokenizer.model", None)
    with pytest.raises(CodecSpecError, match=r"xytok\[speechtokenizer\]"):
        import_speechtokenizer_class()


def test_bigcodec_checkpoint_format(models, tmp_path):
    """The released key names load (weights land where they were saved); the released padding gives
    ceil((N + 1) / 200) frames; a checkpoint that is not BigCodec's fails naming the file and why."""
    from xytok.codecs.bigcodec import BigCodecCodec

    ckpt = torch.load(Path(models["bigcodec"]) / "bigcodec.pt", weights_only=True)
    codec = BigCodecCodec(models["bigcodec"])
    assert torch.equal(codec.encoder.block[0].parametrizations.weight.original1, ckpt["CodecEnc"]["block.0.weight_v"])
    assert torch.equal(codec.decoder.quantizer.layers[0]._codebook.weight,
                       ckpt["generator"]["quantizer.layers.0._codebook.weight"])
    assert [c.shape[1] for c in codec.encode([_wav(1.0), _wav(0.5)[:-1]])] == [81, 40]
    with pytest.raises(CodecSpecError, match="--num_quantizers 2 not supported"):
        load_codec_family(f"bigcodec:{models['bigcodec']}", num_quantizers=2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((Path(models["bigcodec"]) / "config.json").read_text())
    torch.save({"CodecEnc": ckpt["CodecEnc"], "generator": {"model.0.bias": torch.zeros(3)}}, bad / "bigcodec.pt")
    with pytest.raises(CodecSpecError, match="generator: does not match the BigCodec architecture"):
        load_codec_family(f"bigcodec:{bad}")
    torch.save({"state_dict": {}}, bad / "bigcodec.pt")
    with pytest.raises(CodecSpecError, match="expected BigCodec's"):
        load_codec_family(f"bigcodec:{bad}")
    with pytest.raises(CodecSpecError, match="no bigcodec.pt"):
        load_codec_family(f"bigcodec:{tmp_path}")


@pytest.mark.parametrize("family,nq_arg,nq", [("bigcodec", [], 1), ("speechtokenizer", ["--num_quantizers", "2"], 2)])
def test_cli_encode_decode(models, tmp_path, family, nq_arg, nq):
    """xytok encode/decode --model FAMILY:DIR on 16 kHz wavs: codes with the family's rows, wavs back."""
    import soundfile as sf

    from xytok.bin import decode, encode
    from xytok.io_codes import read_codes

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "utt0.wav", _wav(0.7), 16000)
    spec, scp = f"{family}:{models[family]}", str(tmp_path / "codes.scp")
    assert encode.main([str(tmp_path / "in"), scp, "--model", spec, "--no_progress"] + nq_arg) == 0
    codes = read_codes(scp)["utt0"]
    hop = 16000 // int(EXPECTED[family][1])
    assert codes.shape[0] == nq and abs(codes.shape[1] - 0.7 * 16000 / hop) <= 1
    assert decode.main([scp, str(tmp_path / "out"), "--model", spec, "--no_progress"] + nq_arg) == 0
    y, sr = sf.read(tmp_path / "out" / "utt0.wav")
    assert sr == 16000 and len(y) == codes.shape[1] * hop
