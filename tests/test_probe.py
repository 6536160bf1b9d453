"""Text-alignment probe: CTC vocabulary/decoding, learning from informative features, CLI + cache."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xytok.eval.probe import CharVocab, ProbeConfig, extract_zq, lr_factor, resolve_model, train_and_evaluate
from golden import TINY_A

GOLDEN = TINY_A
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def test_vocab_greedy_decode():
    v = CharVocab(["ab c", "ca"])
    assert v.chars == [" ", "a", "b", "c"] and len(v) == 5
    ids = [0, 2, 2, 0, 2, 3, 1, 1, 4, 0]  # a a(blank)a b ' ' c -> "aab c"
    assert v.greedy_decode(ids) == "aab c"
    assert v.encode("abz") == [2, 3]  # unknown characters are dropped


def _synthetic(n, informative, rng, words=("ab", "ba", "cab", "bc")):
    """Utterances of random words; features one-hot per character (12.5 Hz) if informative, else noise."""
    alphabet = " abc"
    items, text = [], {}
    for i in range(n):
        t = " ".join(rng.choice(words) for _ in range(3))
        f = np.zeros((len(t), 4), np.float32)
        if informative:
            f[np.arange(len(t)), [alphabet.index(c) for c in t]] = 1.0
        f += 0.05 * rng.standard_normal(f.shape).astype(np.float32)
        items.append((f"u{i:03d}", f))
        text[f"u{i:03d}"] = t
    return items, text


def test_probe_learns_text_from_informative_features():
    torch.set_num_threads(1)
    cfg = ProbeConfig(hidden=32, epochs=15, batch_size=8, lr=1e-2, seed=0)
    res = {}
    for informative in (True, False):
        rng = np.random.default_rng(0)
        tr, ttr = _synthetic(48, informative, rng)
        va, tva = _synthetic(12, informative, rng)
        res[informative] = train_and_evaluate(tr, va, ttr, tva, cfg)
    print({k: (v["wer"], v["cer"]) for k, v in res.items()})
    assert res[True]["wer"] < 0.5 < res[False]["wer"]
    assert res[True]["cer"] < res[False]["cer"]
    r = res[True]
    assert r["n_train"] == 48 and r["n_valid"] == 12 and r["input_dim"] == 4
    assert r["wer_counts"]["kaldi"].startswith("%WER ") and r["cer_counts"]["kaldi"].startswith("%CER ")
    # deterministic with a fixed seed
    rng = np.random.default_rng(1)
    tr, ttr = _synthetic(16, True, rng)
    va, tva = _synthetic(4, True, rng)
    small = ProbeConfig(hidden=16, epochs=2, batch_size=8, seed=3)
    a, b = (train_and_evaluate(tr, va, ttr, tva, small) for _ in range(2))
    assert a["train_loss"] == b["train_loss"] and a["hyps"] == b["hyps"]


def test_lr_factor_warmup_and_cosine():
    f = lr_factor("cosine", warmup=0.1, min_ratio=0.05, total_steps=100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # 10 warm-up steps, linear
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.05, abs=1e-3)  # cosine to min
    assert f(10) > f(40) > f(70) > f(99)
    c = lr_factor("constant", warmup=0.0, min_ratio=0.05, total_steps=100)
    assert c(0) == c(99) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("step", 0.1, 0.05, 100)


def test_probe_subsample_and_schedule_still_learn():
    """The cheap settings (LSTM at 25 Hz, warm-up + cosine, frame dropout) must keep the probe working."""
    torch.set_num_threads(1)
    cfg = ProbeConfig(hidden=32, epochs=15, batch_size=8, lr=1e-2, seed=0, subsample=2, warmup=0.1,
                      schedule="cosine", frame_dropout=0.05)
    rng = np.random.default_rng(0)
    tr, ttr = _synthetic(48, True, rng)
    va, tva = _synthetic(12, True, rng)
    res = train_and_evaluate(tr, va, ttr, tva, cfg)
    assert res["wer"] < 0.5 and res["probe_config"]["subsample"] == 2
    assert res["n_train_dropped"] == 0
    # CTC feasibility is checked at the LSTM rate: halve the features -> 12.5 Hz cannot fit, 25 Hz can
    short = [(u, f[: (len(f) + 1) // 2]) for u, f in tr]
    assert train_and_evaluate(short, va, ttr, tva, ProbeConfig(hidden=8, epochs=1, subsample=2))["n_train_dropped"] == 0
    with pytest.raises(ValueError, match="no usable training utterances"):
        train_and_evaluate(short, va, ttr, tva, ProbeConfig(hidden=8, epochs=1, subsample=4))
    with pytest.raises(ValueError, match="subsample"):
        train_and_evaluate(tr, va, ttr, tva, ProbeConfig(hidden=8, epochs=1, subsample=3))


def test_resolve_model(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.yaml").write_text("x: 1\n")
    with pytest.raises(FileNotFoundError, match="model.ckpt"):
        resolve_model(str(tmp_path))
    assert resolve_model(str(tmp_path), random_init=True) == (str(tmp_path / "export" / "config.yaml"), None)
    (tmp_path / "export" / "model.ckpt").write_bytes(b"")
    assert resolve_model(str(tmp_path))[1] == str(tmp_path / "export" / "model.ckpt")


@pytest.fixture(scope="module")
def librivox_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe_data")
    trans = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        words, utt = line.rsplit(" (", 1)
        trans[utt.rstrip(")")] = words.replace("<s>", "").replace("</s>", "").strip()
    utts = sorted(trans)
    for name, sel in (("train", utts[:3]), ("valid", utts[3:])):
        (d / name).mkdir()
        (d / name / "wav.scp").write_text("".join(f"{u} {LIBRIVOX / u}.wav\n" for u in sel))
        (d / name / "text").write_text("".join(f"{u} {trans[u]}\n" for u in sel))
    return d


def test_extract_zq_shape():
    from xytok.codec import load_codec

    torch.set_num_threads(1)
    codec = load_codec(GOLDEN / "config.yaml", GOLDEN / "model.ckpt")
    wav = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    zq = extract_zq(codec, wav)
    assert zq.shape == (25, 256)  # 2 s at 12.5 Hz, 4D = 256 channels in tiny_a
    assert np.isfinite(zq).all()


def test_probe_cli_and_feature_cache(librivox_dirs, tmp_path, monkeypatch):
    from xytok.bin.probe import main

    d = librivox_dirs
    args = ["--config", str(GOLDEN / "config.yaml"), "--checkpoint", str(GOLDEN / "model.ckpt"),
            "--train_data", str(d / "train"), "--valid_data", str(d / "valid"), "--out", str(tmp_path),
            "--epochs", "2", "--hidden", "16"]
    assert main(args) == 0
    res = json.loads((tmp_path / "probe.json").read_text())
    assert res["n_train"] == 3 and res["n_valid"] == 2 and res["input_dim"] == 256
    assert 0.0 <= res["wer"] and len(res["train_loss"]) == 2
    assert (tmp_path / "wer.txt").read_text().startswith("%WER ")
    assert (tmp_path / "feats" / "train" / "index.tsv").is_file() and (tmp_path / "hyp.txt").is_file()

    # Re-run: features come from the cache, the codec is not even built.
    import xytok.codec

    def boom(*a, **k):
        raise AssertionError("codec loaded although the cache is valid")

    monkeypatch.setattr(xytok.codec, "load_codec", boom)
    assert main(args[:-1] + ["8", "--subsample", "2", "--warmup", "0.2", "--schedule", "cosine",
                             "--frame_dropout", "0.1", "--weight_decay", "0.01"]) == 0
    res = json.loads((tmp_path / "probe.json").read_text())
    assert res["probe_config"]["hidden"] == 8 and res["probe_config"]["subsample"] == 2
    assert res["probe_config"]["schedule"] == "cosine" and res["probe_config"]["frame_dropout"] == 0.1
    assert "25 Hz LSTM input" in res["features"]
    # A different model (random init) invalidates the cache.
    with pytest.raises(AssertionError, match="codec loaded"):
        main(args[:2] + ["--random_init"] + args[4:])


def test_probe_random_init_control(librivox_dirs, tmp_path):
    """--random_init: k-means codebooks (step 0) give frame-varying z_q; zero codebooks a constant."""
    from xytok.bin.probe import main
    from xytok.eval.probe import load_items

    d = librivox_dirs
    common = ["--config", str(GOLDEN / "config.yaml"), "--random_init", "--train_data", str(d / "train"),
              "--valid_data", str(d / "valid"), "--epochs", "1", "--hidden", "8"]
    spread = {}
    for init in ("kmeans", "zero"):
        out = tmp_path / init
        assert main(common + ["--out", str(out), "--codebook_init", init]) == 0
        res = json.loads((out / "probe.json").read_text())
        assert res["random_init"] and res["model_checkpoint"] is None and res["codebook_init"] == init
        feats = [m for _, m in load_items(out / "feats" / "train")]
        spread[init] = max(float(np.asarray(m).std(0).max()) for m in feats)
    assert spread["zero"] < 1e-5 < spread["kmeans"]
    assert res["codebook_init_frames"] is None


def test_extract_zq_uses_the_codecs_windowing():
    """> 30 s: z_q of the codes of XYTokenizer.encode (30-s windows, 10-s look-ahead), not plain 30-s cuts."""
    from xytok.codec import load_codec

    torch.set_num_threads(1)
    codec = load_codec(GOLDEN / "config.yaml", GOLDEN / "model.ckpt")
    sr = 16000
    wav = np.random.default_rng(0).standard_normal(sr * 35).astype(np.float32) * 0.1
    zq = extract_zq(codec, wav)
    assert zq.shape == (35 * sr // 1280, 256)  # floor(N / 1280) frames, as encode gives
    codes = codec.encode([torch.from_numpy(wav)])[0]
    np.testing.assert_allclose(zq, codec.decode_codes(codes.unsqueeze(1))[0].T.detach().numpy(), atol=1e-6)
    # window 1 = [0, 30 s): its first 20 s of frames are kept; window 2 starts at 20 s
    np.testing.assert_allclose(zq[:250], extract_zq(codec, wav[: 30 * sr])[:250], atol=1e-5)
    np.testing.assert_allclose(zq[250:], extract_zq(codec, wav[20 * sr:]), atol=1e-5)
    # ... where plain 30-s cuts would have taken frames 250-374 from the first window
    assert not np.allclose(zq[250:375], extract_zq(codec, wav[: 30 * sr])[250:375], atol=1e-3)
    with pytest.raises(ValueError, match="shorter than one code frame"):
        extract_zq(codec, wav[:1000])


def test_unfeaturised_valid_utterances_count_as_errors():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tr, ttr = _synthetic(16, True, rng)
    va, tva = _synthetic(6, True, rng)
    cfg = ProbeConfig(hidden=16, epochs=2, batch_size=8, seed=0)
    full = train_and_evaluate(tr, va, ttr, tva, cfg)
    lost = {u: "too short" for u, _ in va[:2]}
    part = train_and_evaluate(tr, va[2:], ttr, tva, cfg, valid_unfeaturised=lost)
    n_words = sum(len(tva[u].split()) for u in tva)
    assert part["wer_counts"]["n_ref"] == full["wer_counts"]["n_ref"] == n_words  # same denominator
    assert part["n_valid"] == 6 and part["n_valid_unfeaturised"] == 2 and part["valid_unfeaturised"] == lost
    lost_words = sum(len(tva[u].split()) for u in lost)
    assert part["wer_counts"]["del"] >= lost_words  # every word of the lost utterances deleted
    assert part["wer"] >= lost_words / n_words


def test_probe_cli_counts_unfeaturised(librivox_dirs, tmp_path):
    import soundfile as sf

    from xytok.bin.probe import main

    valid = tmp_path / "valid"
    valid.mkdir()
    sf.write(tmp_path / "tiny.wav", np.zeros(800, np.float32), 16000)  # 50 ms: under one code frame
    (valid / "wav.scp").write_text((librivox_dirs / "valid" / "wav.scp").read_text() + f"zz-short {tmp_path}/tiny.wav\n")
    (valid / "text").write_text((librivox_dirs / "valid" / "text").read_text() + "zz-short HELLO THERE\n")
    out = tmp_path / "out"
    assert main(["--config", str(GOLDEN / "config.yaml"), "--checkpoint", str(GOLDEN / "model.ckpt"),
                 "--train_data", str(librivox_dirs / "train"), "--valid_data", str(valid), "--out", str(out),
                 "--epochs", "1", "--hidden", "8"]) == 0
    res = json.loads((out / "probe.json").read_text())
    assert res["n_valid"] == 3 and res["n_valid_unfeaturised"] == 1
    assert "shorter than one code frame" in res["valid_unfeaturised"]["zz-short"]
    assert "1 unfeaturised" in (out / "wer.txt").read_text()
    assert "look-ahead" in res["features"]
