"""The probe at corpus scale: float16 feature shards on disk, streamed through a bounded shuffle
buffer, streaming normalisation statistics, batched extraction, resumable cache builds."""
import json
import logging
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from golden import TINY_A
from xytok.eval.probe import (ProbeConfig, cache_features, extract_zq, extract_zq_batch, load_items, open_features,
                              train_and_evaluate)
from xytok.eval.probe_features import (BatchStream, FeatureStore, MemoryFeatures, ShardWriter, count_batches,
                                       plan_epoch, streaming_stats)

SR = 16000
DURATIONS = (1.3, 2.0, 31.5, 0.05, 4.7, 0.9)  # one over 30 s (two encode windows), one under a code frame


@pytest.fixture(scope="module")
def codec():
    from xytok.codec import load_codec

    torch.set_num_threads(1)
    return load_codec(TINY_A / "config.yaml", TINY_A / "model.ckpt")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream_data")
    rng = np.random.default_rng(0)
    scp, text = [], []
    for i, sec in enumerate(DURATIONS):
        p = d / f"u{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(SR * sec))).astype(np.float32), SR)
        scp.append(f"u{i} {p}\n")
        text.append(f"u{i} HELLO WORLD\n")
    (d / "wav.scp").write_text("".join(scp))
    (d / "text").write_text("".join(text))
    return d


def _wavs(data_dir):
    return {f"u{i}": sf.read(data_dir / f"u{i}.wav", dtype="float32")[0] for i in range(len(DURATIONS))}


def test_batched_extraction_equals_one_at_a_time(codec, data_dir):
    """Several utterances per codec.encode call give exactly the per-utterance z_q (xy codec and the
    xy family with --num_quantizers)."""
    from xytok.codecs.xy import XYCodec
    from xytok.eval.probe import _featurise

    wavs = [w for u, w in _wavs(data_dir).items() if u != "u3"]
    for one, many in zip((extract_zq(codec, w) for w in wavs), extract_zq_batch(codec, wavs)):
        np.testing.assert_array_equal(one, many)
    fam = XYCodec("tiny", codec=codec, num_quantizers=2)
    scp = {u: str(data_dir / f"{u}.wav") for u in _wavs(data_dir)}
    got = dict(_featurise(fam, sorted(scp), scp, "cpu"))
    assert "shorter than one code frame" in got.pop("u3")  # the batch fell back to one by one, naming it
    for u, f in got.items():
        np.testing.assert_array_equal(f, fam.embed(_wavs(data_dir)[u]))


def test_store_is_the_float16_round_trip_of_the_features(codec, data_dir, tmp_path):
    path = cache_features(codec, str(data_dir), tmp_path, "train", "fp", batch_size=3, shard_mb=0.05)
    store = open_features(path)
    assert len(store.shards) > 1  # small shards: several files
    wavs = _wavs(data_dir)
    for u, w in wavs.items():
        if u == "u3":
            continue
        want = extract_zq(codec, w).astype(np.float16)
        assert store.get(u).dtype == np.float16
        np.testing.assert_array_equal(store.get(u), want)  # bit-exact
    assert [u for u, _ in load_items(path)] == sorted(set(wavs) - {"u3"})
    meta = json.loads((tmp_path / "train.meta.json").read_text())
    assert "shorter than one code frame" in meta["unfeaturised"]["u3"] and meta["dtype"] == "float16"
    assert meta["n_frames"] == sum(store.lengths.values()) and meta["dim"] == store.dim == 256


class _KilledAfter:
    """The codec, killed (KeyboardInterrupt) on its `kill_at`-th encode call; counts encoded utterances."""

    def __init__(self, codec, kill_at=None):
        self._codec, self.kill_at, self.calls, self.encoded = codec, kill_at, 0, 0

    def encode(self, wavs, **kw):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        codes = self._codec.encode(wavs, **kw)
        self.encoded += len(wavs)
        return codes

    def __getattr__(self, name):
        return getattr(self._codec, name)


def test_killed_cache_build_resumes(codec, data_dir, tmp_path):
    fresh = cache_features(codec, str(data_dir), tmp_path / "fresh", "train", "fp", batch_size=2, shard_mb=1e-6)
    killed = _KilledAfter(codec, kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        cache_features(killed, str(data_dir), tmp_path / "k", "train", "fp", batch_size=2, shard_mb=1e-6)
    store_dir = tmp_path / "k" / "train"
    assert not (tmp_path / "k" / "train.meta.json").exists()  # unfinished: no meta
    (store_dir / "shard-00042.npy").write_bytes(b"torn")  # as if killed between rename and commit
    (store_dir / ".shard-00002.npy.x.tmp").write_bytes(b"half")
    again = _KilledAfter(codec)
    path = cache_features(again, str(data_dir), tmp_path / "k", "train", "fp", batch_size=2, shard_mb=1e-6)
    assert again.encoded == 3  # u2, u4, u5: the first batch (u0, u1) is not redone, u3 is too short
    assert not (store_dir / "shard-00042.npy").exists() and not list(store_dir.glob("*.tmp"))
    a, b = load_items(fresh), load_items(path)
    assert [u for u, _ in a] == [u for u, _ in b]
    for (_, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # a different model: the finished store is rebuilt, not reused
    other = _KilledAfter(codec)
    cache_features(other, str(data_dir), tmp_path / "k", "train", "fp2", batch_size=2)
    assert other.encoded == 5


def _synthetic_store(tmp_path, n_utts=60, dim=8, shard_mb=0.002, seed=0):
    rng = np.random.default_rng(seed)
    items = [(f"s{i:03d}", (3.0 + 0.5 * rng.standard_normal((int(rng.integers(5, 40)), dim))).astype(np.float32))
             for i in range(n_utts)]
    w = ShardWriter(tmp_path / "store", {"test": 1}, shard_mb=shard_mb)
    for u, f in items:
        w.add(u, f)
    w.finish()
    return FeatureStore(tmp_path / "store"), items


def test_shuffle_buffer_bounds_what_the_loader_holds(tmp_path):
    store, items = _synthetic_store(tmp_path)
    total = sum(len(f) for _, f in items)
    largest_shard = max(sum(store.lengths[u] for u in s) for s in store.shards)
    assert len(store.shards) >= 8
    capacity = 200  # > 4 utterances (batch size) of <= 40 frames: every drain has whole batches
    seen_orders = []
    for epoch in range(2):
        plan = plan_epoch(store, list(store.lengths), 4, capacity, random.Random(epoch), random.Random(10 + epoch))
        stream = BatchStream(store, plan)
        batches = [[u for u, _ in b] for b in stream]
        assert stream.peak_held_frames <= capacity + largest_shard  # the loader's own accounting
        assert stream.peak_held_frames > capacity / 2 and stream.held_frames == 0
        assert stream.frames_read == total  # each shard read once
        flat = [u for b in batches for u in b]
        assert sorted(flat) == sorted(store.lengths)  # every utterance once per epoch
        assert len(batches) == count_batches(plan) and sum(len(b) < 4 for b in batches) <= 1
        seen_orders.append(flat)
    assert seen_orders[0] != seen_orders[1]
    # batches mix shards, and an unbounded buffer holds everything
    shard_of = {u: s for s, us in enumerate(store.shards) for u in us}
    assert any(len({shard_of[u] for u in b}) > 1 for b in batches)
    unbounded = BatchStream(store, plan_epoch(store, list(store.lengths), 4, None, random.Random(0)))
    list(unbounded)
    assert unbounded.peak_held_frames >= total


def test_streaming_stats_equal_numpy(tmp_path):
    store, items = _synthetic_store(tmp_path)
    f16 = np.concatenate([f.astype(np.float16) for _, f in items]).astype(np.float64)
    for source in (store, MemoryFeatures(items)):
        want = f16 if source is store else np.concatenate([f for _, f in items]).astype(np.float64)
        mean, std, n = streaming_stats(source)
        assert n == len(want)
        np.testing.assert_allclose(mean, want.mean(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(std, want.std(0), rtol=0, atol=1e-6)
    sub = [u for u, _ in items[::3]]
    mean, _, _ = streaming_stats(store, sub)
    np.testing.assert_allclose(mean, np.concatenate([store.get(u) for u in sub]).astype(np.float64).mean(0), atol=1e-6)


def test_streamed_training_equals_in_memory_when_the_buffer_holds_all(tmp_path):
    """Same float16 features from disk or from memory, a buffer that holds the set -> same batches,
    same statistics, same losses and hypotheses; a small buffer still trains."""
    rng = np.random.default_rng(0)
    alphabet = " abc"
    w = ShardWriter(tmp_path / "tr", {"t": 1}, shard_mb=0.0005)
    mem, text = [], {}
    for i in range(32):
        t = " ".join(rng.choice(["ab", "ba", "cab", "bc"]) for _ in range(3))
        f = np.zeros((len(t), 4), np.float32)
        f[np.arange(len(t)), [alphabet.index(c) for c in t]] = 1.0
        f = (f + 0.05 * rng.standard_normal(f.shape)).astype(np.float16)
        w.add(f"u{i:03d}", f)
        mem.append((f"u{i:03d}", f.astype(np.float32)))
        text[f"u{i:03d}"] = t
    w.finish()
    store = FeatureStore(tmp_path / "tr")
    assert len(store.shards) > 2
    cfg = ProbeConfig(hidden=16, epochs=2, batch_size=8, seed=1)
    a = train_and_evaluate(store, mem[:8], text, text, cfg)
    b = train_and_evaluate(mem, mem[:8], text, text, cfg)
    assert a["train_loss"] == b["train_loss"] and a["hyps"] == b["hyps"]
    small = train_and_evaluate(store, mem[:8], text, text, ProbeConfig(hidden=16, epochs=2, batch_size=4, seed=1,
                                                                       shuffle_buffer_frames=60))
    assert small["peak_buffered_frames"] <= 60 + max(sum(store.lengths[u] for u in s) for s in store.shards)
    assert small["train_loss"] != a["train_loss"] and np.isfinite(small["train_loss"]).all()


def test_probe_cli_streams_rebuilds_old_caches_and_refuses_absent_cuda(data_dir, tmp_path, caplog):
    from xytok.bin.probe import main

    out = tmp_path / "out"
    feats = out / "feats"
    feats.mkdir(parents=True)
    (feats / "train.ark").write_bytes(b"old")  # a cache of the float32 Kaldi era
    (feats / "train.scp").write_text("u0 train.ark:4\n")
    (feats / "train.meta.json").write_text(json.dumps({"model": "x", "utts": "y"}))
    args = ["--config", str(TINY_A / "config.yaml"), "--checkpoint", str(TINY_A / "model.ckpt"),
            "--train_data", str(data_dir), "--valid_data", str(data_dir), "--out", str(out),
            "--epochs", "1", "--hidden", "8", "--shuffle_buffer_frames", "300", "--shard_mb", "0.1",
            "--extract_batch_size", "3"]
    with caplog.at_level(logging.INFO, logger="xytok.probe"):
        assert main(args) == 0
    assert "old float32 Kaldi format" in caplog.text and not (feats / "train.ark").exists()
    res = json.loads((out / "probe.json").read_text())
    assert res["probe_config"]["shuffle_buffer_frames"] == 300 and res["device"] == "cpu"
    assert res["n_valid"] == len(DURATIONS) and res["n_valid_unfeaturised"] == 1 and "float16" in res["features"]
    assert (out / "wer.txt").read_text().startswith("%WER ")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            main(args + ["--device", "cuda"])


def test_cpu_bilstm_equals_the_packed_lstm():
    """On CPU the BiLSTM runs on padded tensors (each item reversed within its length for the
    backward direction): the packed LSTM's outputs and gradients on every item's frames."""
    from xytok.eval.probe import BiLSTMCTC

    torch.manual_seed(0)
    m = BiLSTMCTC(12, 16, 7, num_layers=2, dropout=0.1).eval()
    x = torch.randn(3, 40, 12)
    lengths = torch.tensor([40, 23, 5])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    h, _ = m.lstm(packed)
    want = m.out(torch.nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=40)[0]).log_softmax(-1)
    got = m(x, lengths)
    mask = (torch.arange(40)[None, :] < lengths[:, None]).unsqueeze(-1)
    torch.testing.assert_close(got * mask, want * mask, atol=1e-5, rtol=0)
    grads = []
    for out in (got, want):
        m.zero_grad()
        (out * mask).sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
