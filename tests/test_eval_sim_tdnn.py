"""WavLM-TDNN SIM backend: the ECAPA-TDNN head against a hand-written forward, checkpoint round trip
in the UniSpeech layout, and the scoring backend built from it (tiny random weights, offline)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xytok.eval.sim import SimError, get_sim_backend, speaker_similarity
from xytok.eval.sim_wavlm_tdnn import WavLMTdnn, WavLMTdnnError, load_wavlm_tdnn, to_unispeech_state_dict


def _tiny_model(seed=0):
    from transformers import WavLMConfig

    torch.manual_seed(seed)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                      conv_dim=(16, 16, 16), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2),
                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32,
                      max_bucket_distance=800, feat_extract_norm="layer", do_stable_layer_norm=True)
    m = WavLMTdnn(cfg, channels=16, emb_dim=8, pooled_channels=24)
    # Non-trivial values everywhere, including layer weights and BatchNorm running statistics.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.startswith("upstream."):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("bn.weight") else 0.0))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return m.eval()


def _bn(x, bn):
    shape = (1, -1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def _crb(x, m, dilation=1, pad=0):
    return _bn(F.relu(F.conv1d(x, m.conv.weight, m.conv.bias, padding=pad, dilation=dilation)), m.bn)


def _se_res2(x, blk, dilation):
    y = _crb(x, blk.Conv1dReluBn1)
    r2 = blk.Res2Conv1dReluBn
    w = r2.width
    outs, prev = [], None
    for i in range(8):
        part = y[:, i * w:(i + 1) * w]
        if i == 7:  # last group is passed through
            outs.append(part)
            break
        inp = part if prev is None else part + prev
        prev = _bn(F.relu(F.conv1d(inp, r2.convs[i].weight, r2.convs[i].bias, padding=dilation, dilation=dilation)),
                   r2.bns[i])
        outs.append(prev)
    y = _crb(torch.cat(outs, 1), blk.Conv1dReluBn2)
    se = blk.SE_Connect
    g = torch.sigmoid(F.linear(F.relu(F.linear(y.mean(2), se.linear1.weight, se.linear1.bias)),
                               se.linear2.weight, se.linear2.bias))
    return x + y * g[:, :, None]


def _hand_head(hs, h):
    w = torch.exp(h.feature_weight) / torch.exp(h.feature_weight).sum()
    x = sum(w[i] * hs[i] for i in range(hs.shape[0])).transpose(1, 2) + 1e-6
    x = (x - x.mean(2, keepdim=True)) / torch.sqrt(x.var(2, unbiased=False, keepdim=True) + 1e-5)
    o1 = _crb(x, h.layer1, pad=2)
    o2 = _se_res2(o1, h.layer2, 2)
    o3 = _se_res2(o2, h.layer3, 3)
    o4 = _se_res2(o3, h.layer4, 4)
    out = F.relu(F.conv1d(torch.cat([o2, o3, o4], 1), h.conv.weight, h.conv.bias))
    p = h.pooling
    a = F.conv1d(torch.tanh(F.conv1d(out, p.linear1.weight, p.linear1.bias)), p.linear2.weight, p.linear2.bias)
    a = torch.softmax(a, dim=2)
    mean = (a * out).sum(2)
    std = torch.sqrt((a * out ** 2).sum(2) - mean ** 2 + 1e-9)
    return F.linear(_bn(torch.cat([mean, std], 1)[:, :, None], h.bn)[:, :, 0], h.linear.weight, h.linear.bias)


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


def test_head_matches_hand_forward():
    # float64 throughout so the 1e-5 tolerance measures the architecture, not float32 rounding
    model = _tiny_model().double()
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        hs = model.hidden_states(wav)
        assert hs.shape[0] == 4  # input of each of the 3 layers + final layer-normed output
        emb = model(wav)
        ref = _hand_head(hs, model.head)
        # the upstream sees the waveform normalised per utterance (s3prl's WavLM-large input norm)
        norm = (wav - wav.mean(1, keepdim=True)) / torch.sqrt(wav.var(1, unbiased=False, keepdim=True) + 1e-5)
        hf = model.upstream(norm, output_hidden_states=True).hidden_states
    assert torch.allclose(torch.stack(hf), hs, atol=1e-5)
    assert emb.shape == (2, 8)
    assert emb.abs().mean() > 0.1
    assert torch.allclose(emb, ref, atol=1e-5), (emb - ref).abs().max()


def test_checkpoint_roundtrip_and_backend(model, tmp_path):
    ckpt = to_unispeech_state_dict(model)
    keys = ckpt["model"]
    assert "feature_extract.model.encoder.layers.0.self_attn.grep_a" in keys
    assert "feature_extract.model.encoder.pos_conv.0.weight_g" in keys
    assert "feature_extract.model.feature_extractor.conv_layers.0.2.1.weight" in keys
    assert "layer2.Res2Conv1dReluBn.convs.6.weight" in keys and "feature_weight" in keys
    # a pre-training-only key from the real checkpoint is ignored
    keys["feature_extract.model.label_embs_concat"] = torch.zeros(3, 4)
    path = tmp_path / "wavlm_large_finetune.pth"
    torch.save(ckpt, path)

    loaded = load_wavlm_tdnn(path)
    wav = torch.randn(1, 6000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(loaded(wav), model(wav), atol=1e-5)

    sim = get_sim_backend("wavlm_tdnn", str(path))
    x = np.random.default_rng(3).standard_normal(12000).astype(np.float32) * 0.1
    assert speaker_similarity(sim, x, x) == pytest.approx(1.0, abs=1e-6)
    other = np.random.default_rng(4).standard_normal(12000).astype(np.float32) * 0.1
    assert speaker_similarity(sim, x, other) < 0.999999


def test_bad_checkpoints(tmp_path, model):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WavLMTdnnError, match="broken.pth"):
        get_sim_backend("wavlm_tdnn", str(bad))
    with pytest.raises(WavLMTdnnError, match="missing.pth"):
        get_sim_backend("wavlm_tdnn", str(tmp_path / "missing.pth"))
    with pytest.raises(SimError, match="--sim_model"):
        get_sim_backend("wavlm_tdnn", None)
    ckpt = to_unispeech_state_dict(model)
    del ckpt["model"]["layer3.Conv1dReluBn1.conv.weight"]
    torch.save(ckpt, tmp_path / "partial.pth")
    with pytest.raises(WavLMTdnnError, match="(?s)partial.pth.*layer3.Conv1dReluBn1.conv.weight"):
        load_wavlm_tdnn(tmp_path / "partial.pth")


def test_score_cli_with_wavlm_tdnn(model, tmp_path, capsys):
    """`xytok score --sim_backend wavlm_tdnn`: SIM 1 for identical audio, the backend/model in
    summary.json; an unreadable checkpoint stops the run (exit 2) with the file named."""
    import json

    import soundfile as sf

    from xytok.bin.score import main as score_main

    path = tmp_path / "wavlm_large_finetune.pth"
    torch.save(to_unispeech_state_dict(model), path)
    rng = np.random.default_rng(5)
    for d in ("ref", "hyp"):
        (tmp_path / d).mkdir()
    x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    sf.write(tmp_path / "ref" / "u1.wav", x, 16000)
    sf.write(tmp_path / "hyp" / "u1.wav", x, 16000)
    args = ["--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "hyp"), "--metrics", "sim",
            "--sim_backend", "wavlm_tdnn"]
    assert score_main(args + ["--sim_model", str(path), "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["sim"] == {"backend": "wavlm_tdnn", "model": str(path)}
    assert s["metrics"]["sim"]["mean"] == pytest.approx(1.0, abs=1e-5)

    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00" * 10)
    assert score_main(args + ["--sim_model", str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "cannot build the SIM backend 'wavlm_tdnn'" in err and "corrupt.pth" in err
