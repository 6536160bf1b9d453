"""UTMOS (UTMOS22 strong learner, xytok.eval.utmos), offline with random weights: the released
checkpoint's key/shape layout, strict loading, the SSL encoder against transformers' Wav2Vec2Model,
the score head against a hand-written numpy forward, batching, and `xytok score --metrics utmos`."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from xytok.bin.score import main as score_main
from xytok.eval.results import COLUMNS, columns_for, model_row, write_results_md
from xytok.eval.utmos import (
    RELEASED_URL, UTMOS22Strong, UtmosConfig, UtmosError, UtmosScorer, config_from_state_dict, length_batches,
    num_frames, state_dict_shapes,
)

SR = 16000
TINY = UtmosConfig(conv_channels=32, hidden=64, layers=2, ffn=128, pos_conv_kernel=16, pos_conv_groups=4,
                   domain_dim=8, judge_dim=8, lstm_hidden=16, proj_hidden=32)


def released_layout() -> dict:
    """Key -> shape of utmos22_strong_step7459_v1.pt (tarepan/SpeechMOS v1.0.0 release), derived from
    the module it loads into strictly (hubconf.py `utmos22_strong`: speechmos/utmos22/strong/model.py
    UTMOS22Strong + speechmos/utmos22/fairseq_alt.py Wav2Vec2Model): wav2vec 2.0 base with fairseq names,
    1x128 domain and judge embedding rows, a 1024->512x2 BLSTM, Linear 1024->2048->1."""
    w = "wav2vec2."
    t = {"domain_emb": (1, 128), "judge_emb": (1, 128), w + "mask_emb": (768,),
         w + "feature_extractor.conv_layers.0.0.weight": (512, 1, 10),
         w + "feature_extractor.conv_layers.0.2.weight": (512,), w + "feature_extractor.conv_layers.0.2.bias": (512,),
         w + "layer_norm.weight": (512,), w + "layer_norm.bias": (512,),
         w + "post_extract_proj.weight": (768, 512), w + "post_extract_proj.bias": (768,),
         w + "encoder.pos_conv.0.bias": (768,), w + "encoder.pos_conv.0.weight_g": (1, 1, 128),
         w + "encoder.pos_conv.0.weight_v": (768, 48, 128),
         w + "encoder.layer_norm.weight": (768,), w + "encoder.layer_norm.bias": (768,),
         "projection.0.weight": (2048, 1024), "projection.0.bias": (2048,),
         "projection.2.weight": (1, 2048), "projection.2.bias": (1,)}
    for i, k in enumerate((3, 3, 3, 3, 2, 2), 1):
        t[w + f"feature_extractor.conv_layers.{i}.0.weight"] = (512, 512, k)
    for i in range(12):
        p = w + f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{proj}.weight"], t[p + f"self_attn.{proj}.bias"] = (768, 768), (768,)
        t.update({p + "fc1.weight": (3072, 768), p + "fc1.bias": (3072,), p + "fc2.weight": (768, 3072),
                  p + "fc2.bias": (768,)})
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            t[p + f"{ln}.weight"], t[p + f"{ln}.bias"] = (768,), (768,)
    for sfx in ("", "_reverse"):
        t.update({f"blstm.weight_ih_l0{sfx}": (2048, 1024), f"blstm.weight_hh_l0{sfx}": (2048, 512),
                  f"blstm.bias_ih_l0{sfx}": (2048,), f"blstm.bias_hh_l0{sfx}": (2048,)})
    return t


def tiny_model(seed=0) -> UTMOS22Strong:
    torch.manual_seed(seed)
    return UTMOS22Strong(TINY).eval()


def speechlike(seconds, f0=120.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 10)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_module_keys_and_shapes_are_the_released_checkpoints():
    shapes = state_dict_shapes()  # real size, on the meta device
    table = released_layout()
    assert set(shapes) - set(table) == set() and set(table) - set(shapes) == set()
    assert {k: v for k, v in shapes.items() if table[k] != v} == {}
    meta = {k: torch.empty(v, device="meta") for k, v in table.items()}
    assert config_from_state_dict(meta) == UtmosConfig() and UtmosConfig().heads == 12


def test_strict_load_round_trip_and_layout_errors(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)  # the release's container: a plain state dict
    scorer = UtmosScorer(str(path))
    assert scorer.model.cfg == TINY
    wav = speechlike(1.0)
    with torch.no_grad():
        want = model(torch.from_numpy(wav)[None]).item()
    assert scorer.score_batch([wav]) == pytest.approx([want], abs=1e-6)

    state = model.state_dict()
    state["blstm.weight_ih"] = state.pop("blstm.weight_ih_l0")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(UtmosError, match="weight_ih_l0"):
        UtmosScorer(str(tmp_path / "renamed.pt"))
    state = model.state_dict()
    state["projection.2.weight"] = torch.zeros(2, TINY.proj_hidden)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(UtmosError, match="projection.2.weight"):
        UtmosScorer(str(tmp_path / "shape.pt"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")  # e.g. a Lightning checkpoint
    with pytest.raises(UtmosError, match="not a UTMOS22 strong state dict"):
        UtmosScorer(str(tmp_path / "wrapped.pt"))


POS_CONV = {"encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
            "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
            "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias"}


def transformers_name(key: str) -> str:
    """fairseq wav2vec 2.0 key (as in the UTMOS checkpoint, minus `wav2vec2.`) -> transformers' Wav2Vec2Model key."""
    if key == "mask_emb":
        return "masked_spec_embed"
    if key in POS_CONV:
        return POS_CONV[key]
    if key.startswith("feature_extractor."):  # conv_layers.i.0 = conv, conv_layers.0.2 = GroupNorm
        return key.replace(".0.2.", ".0.layer_norm.").replace(".0.weight", ".conv.weight")
    if key.startswith("layer_norm."):
        return "feature_projection." + key
    if key.startswith("post_extract_proj."):
        return key.replace("post_extract_proj.", "feature_projection.projection.")
    for a, b in ((".self_attn_layer_norm.", ".layer_norm."), (".self_attn.", ".attention."),
                 (".fc1.", ".feed_forward.intermediate_dense."), (".fc2.", ".feed_forward.output_dense.")):
        key = key.replace(a, b)
    return key


def test_ssl_encoder_equals_transformers_wav2vec2():
    """fairseq-named wav2vec 2.0 here == transformers' Wav2Vec2Model (group-norm extractor, post-LN)
    with the same random weights: conv stack, masked-free GroupNorm, weight-normed positional conv."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    ours = tiny_model(1).wav2vec2
    ref = Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=TINY.hidden, num_hidden_layers=TINY.layers, num_attention_heads=TINY.heads,
        intermediate_size=TINY.ffn, conv_dim=(TINY.conv_channels,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
        num_conv_pos_embeddings=TINY.pos_conv_kernel, num_conv_pos_embedding_groups=TINY.pos_conv_groups)).eval()
    mapped = {transformers_name(k): v for k, v in ours.state_dict().items()}
    ref.load_state_dict(mapped, strict=True)
    wave = torch.from_numpy(speechlike(0.7))[None]
    with torch.no_grad():
        got, n = ours(wave, torch.tensor([wave.shape[1]]))
        want = ref(wave).last_hidden_state
    assert got.shape == want.shape and int(n) == want.shape[1] == num_frames(wave.shape[1])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def _np_lstm(x, w_ih, w_hh, b):
    """PyTorch's LSTM cell in numpy (gates i, f, g, o) over the rows of x."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = np.zeros(w_hh.shape[1]); c = np.zeros_like(h)  # noqa: E702
    out = []
    for xt in x:
        i, f, g, o = np.split(w_ih @ xt + w_hh @ h + b, 4)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.array(out)


def test_score_head_matches_hand_computed_forward():
    """Frame features -> [features, domain row, judge row] -> BLSTM -> Linear/ReLU/Linear -> 2*mean+3,
    on a padded batch whose second item is shorter (padding must not reach its score)."""
    model = tiny_model(2)
    torch.manual_seed(3)
    frames, n = torch.randn(2, 7, TINY.hidden), torch.tensor([7, 4])
    with torch.no_grad():
        got = model.score_frames(frames, n).numpy()
    p = {k: v.double().numpy() for k, v in model.state_dict().items()}
    for b in range(2):
        x = frames[b, : n[b]].double().numpy()
        x = np.concatenate([x, np.repeat(p["domain_emb"], len(x), 0), np.repeat(p["judge_emb"], len(x), 0)], 1)
        fwd, bwd = (_np_lstm(x[::step], p[f"blstm.weight_ih_l0{sfx}"], p[f"blstm.weight_hh_l0{sfx}"],
                             p[f"blstm.bias_ih_l0{sfx}"] + p[f"blstm.bias_hh_l0{sfx}"])[::step]
                    for step, sfx in ((1, ""), (-1, "_reverse")))  # the reverse direction runs back from frame n-1
        hid = np.maximum(np.concatenate([fwd, bwd], 1) @ p["projection.0.weight"].T + p["projection.0.bias"], 0)
        frame_scores = hid @ p["projection.2.weight"].T + p["projection.2.bias"]
        assert got[b] == pytest.approx(2 * frame_scores.mean() + 3, abs=1e-5)


def test_batched_scores_equal_unbatched_and_length_batches():
    model = tiny_model(4)
    wavs = [speechlike(s, seed=i) for i, s in enumerate((1.0, 0.61, 0.3))]
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(3, int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = torch.from_numpy(w)
    with torch.no_grad():
        together = model(batch, lengths)
        alone = torch.cat([model(torch.from_numpy(w)[None]) for w in wavs])
        naive = model(batch)  # the same batch without lengths: padding leaks in
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert (naive[1:] - alone[1:]).abs().max() > 1e-4  # so the masking is what makes them equal
    groups = length_batches([("a", 100), ("b", 30), ("c", 40), ("d", 90)], max_batch_samples=200)
    assert groups == [[("b", 30), ("c", 40)], [("d", 90), ("a", 100)]]
    assert length_batches([("long", 500), ("x", 10)], 200) == [[("x", 10)], [("long", 500)]]


def test_score_cli_writes_utmos_per_utterance_summary_and_results(tmp_path, capsys):
    model = tiny_model(5)
    pt = tmp_path / "utmos_tiny.pt"
    torch.save(model.state_dict(), pt)
    ref_dir, hyp_dir = tmp_path / "ref", tmp_path / "hyp"
    ref_dir.mkdir(), hyp_dir.mkdir()
    clips = {"u1": 1.2, "u2": 0.8, "u3": 0.5, "u4": 0.9}
    for i, (u, sec) in enumerate(clips.items()):
        x = speechlike(sec, seed=i)
        sf.write(ref_dir / f"{u}.wav", x, SR, subtype="FLOAT")
        if u != "u4":  # u4: no reconstruction
            noise = 0.05 * np.random.default_rng(10 + i).standard_normal(len(x))
            sf.write(hyp_dir / f"{u}.wav", (x + noise).astype(np.float32), SR, subtype="FLOAT")
    out = tmp_path / "score"
    rc = score_main(["--ref", str(ref_dir), "--hyp", str(hyp_dir), "--metrics", "utmos", "--utmos_model", str(pt),
                     "--utmos_batch_seconds", "2", "--out", str(out)])
    assert rc == 0
    assert "utmos    mean" in capsys.readouterr().out
    rows = [ln.split("\t") for ln in (out / "utt_scores.tsv").read_text().splitlines()]
    assert rows[0] == ["utt_id", "utmos", "utmos_ref"]
    tsv = {r[0]: dict(zip(rows[0][1:], r[1:])) for r in rows[1:]}
    with torch.no_grad():
        for u in ("u1", "u2", "u3"):
            for col, d in (("utmos", hyp_dir), ("utmos_ref", ref_dir)):
                x, _ = sf.read(d / f"{u}.wav", dtype="float32")
                assert float(tsv[u][col]) == pytest.approx(model(torch.from_numpy(x)[None]).item(), abs=1e-4)
    assert tsv["u4"]["utmos"] == "" and tsv["u4"]["utmos_ref"] == ""  # missing hypothesis: recorded failure
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]["utmos"]
    assert m["n_scored"] == 3 and m["n_failed"] == 1 and "missing_hypothesis" in m["failures"]["u4"]
    assert m["mean"] == pytest.approx(np.mean([float(tsv[u]["utmos"]) for u in ("u1", "u2", "u3")]), abs=1e-5)
    assert "judge id 288" in summary["protocol"]["utmos"] and summary["utmos"]["model"] == str(pt)

    cols = columns_for([summary])
    assert cols == COLUMNS[:-1] + ["UTMOS", "N"]
    info = {"bps": 1000, "frame_rate": 12.5}
    assert model_row("codec", summary, None, info)["UTMOS"] == f"{m['mean']:.2f}"
    text = write_results_md(tmp_path / "RESULTS.md", [{"name": "codec", "test_set": "test", "summary": summary,
                                                        "probe": None, "info": info}])
    assert f"| {m['mean']:.2f} | 3 |" in text and "- UTMOS: UTMOS22 strong learner" in text


def test_unloadable_model_exits_nonzero_naming_it(tmp_path, monkeypatch, capsys):
    sf.write(tmp_path / "a.wav", speechlike(0.5), SR)
    args = ["--ref", str(tmp_path), "--hyp", str(tmp_path), "--metrics", "utmos", "--out", str(tmp_path / "o")]
    missing = tmp_path / "nowhere" / "utmos22_strong_step7459_v1.pt"
    assert score_main(args + ["--utmos_model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "metric utmos: cannot build the UTMOS backend" in err and str(missing) in err
    # a URL that cannot be fetched (nothing listens on port 9): the message names it and the way out
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = "http://127.0.0.1:9/utmos22_strong_step7459_v1.pt"
    assert score_main(args + ["--utmos_model", url]) == 2
    err = capsys.readouterr().err
    assert f"cannot download {url}" in err and "--utmos_model /path/utmos22_strong_step7459_v1.pt" in err
    # ... and once the file is in torch hub's cache, the URL (here the default release URL) loads offline
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_model().state_dict(), cache / RELEASED_URL.rsplit("/", 1)[1])
    assert UtmosScorer(None).model.cfg == TINY
    assert not (tmp_path / "o" / "summary.json").exists()  # nothing was scored by the failed runs
