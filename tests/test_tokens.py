"""Token datasets (xytok.tokens, `xytok encode --format shards`): exact round trip, 2 bytes per code,
resume after SIGKILL, several jobs in one directory, metadata, bad shards named."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from golden import TINY_A
from xytok import cli
from xytok.io_codes import write_codes
from xytok.tokens import (TokenShardError, TokenShardWriter, iter_index, make_info, read_shard_tar, read_shards,
                          storage_stats)

REPO = Path(__file__).resolve().parent.parent
INFO = make_info(8, 1024)


def _random_codes(n, seed=0, nq=8, lo=20, hi=200):
    rng = np.random.default_rng(seed)
    return {f"utt{i:04d}": rng.integers(0, 1024, size=(nq, int(rng.integers(lo, hi)))) for i in range(n)}


def test_round_trip_exact_two_bytes_per_code_and_shards(tmp_path):
    codes = _random_codes(120)
    codes["utt0000"][:, 0] = [0, 1023, 512, 1, 1022, 7, 0, 1023]  # the range's ends survive
    with TokenShardWriter(tmp_path, INFO, max_bytes=40_000) as w:
        for i, (utt, c) in enumerate(codes.items()):
            w.write(utt, torch.from_numpy(c) if i % 2 else c, duration=c.shape[1] * 0.08,
                    text=f"WORDS OF {utt}" if i % 3 else None, speaker=f"spk{i % 4}")
    assert w.num_shards >= 5  # rolled over
    got = list(read_shards(tmp_path))
    assert [u for u, _, _ in got] == list(codes)  # written order, shard by shard
    for i, (utt, c, meta) in enumerate(got):
        assert c.dtype == np.int64 and c.shape == codes[utt].shape
        np.testing.assert_array_equal(c, codes[utt])
        assert meta["nq"] == 8 and meta["frames"] == c.shape[1] and meta["speaker"] == f"spk{i % 4}"
        assert meta["duration"] == pytest.approx(c.shape[1] * 0.08)
        assert ("text" in meta) == bool(i % 3) and meta["shard"].endswith(".tar")
    # the stored type, and the same utterances read from the tars alone
    first = next(read_shards(tmp_path, dtype=None))
    assert first[1].dtype == np.uint16
    from_tars = [x for p in sorted(tmp_path.glob("codes-*.tar")) for x in read_shard_tar(p)]
    assert [u for u, _, _ in from_tars] == list(codes)
    assert all(np.array_equal(c, codes[u]) for u, c, _ in from_tars)

    st = storage_stats(tmp_path)
    n_codes = sum(c.size for c in codes.values())
    assert st["codes"] == n_codes and st["code_bytes"] == 2 * n_codes and st["code_bytes_per_code"] == 2.0
    # the codes member holds exactly the codes: 2 bytes each, nothing else
    for p in tmp_path.glob("codes-*.tar"):
        import tarfile

        with tarfile.open(p) as t:
            m = t.getmember("codes.u16")
            rows = [json.loads(x) for x in t.extractfile("index.jsonl").read().decode().splitlines()]
        assert m.size == 2 * sum(r["nq"] * r["frames"] for r in rows)
    # against today's float32 Kaldi ark of the same codes
    write_codes(str(tmp_path / "ark" / "codes.scp"), codes)
    ark = (tmp_path / "ark" / "codes.ark").stat().st_size
    assert ark / n_codes > 4.0
    # with shards of the default size (one here): tar headers, padding and the metadata members are
    # a small fraction (tiny test shards pay tar's 10-KB record padding each)
    with TokenShardWriter(tmp_path / "one", INFO) as w:
        for utt, c in codes.items():
            w.write(utt, c, duration=c.shape[1] * 0.08)
    one = storage_stats(tmp_path / "one")
    assert one["shards"] == 1 and one["code_bytes"] == 2 * n_codes
    with tarfile.open(next((tmp_path / "one").glob("*.tar"))) as t:
        meta_bytes = t.getmember("index.jsonl").size + t.getmember("info.json").size
    assert one["tar_overhead_bytes"] - meta_bytes < 16384  # 3 headers, padding, end-of-archive record
    assert one["tar_bytes"] < 0.55 * ark
    print(f"\nbytes per code ({len(codes)} utterances of 8 x 20..200 codes, one shard): codes "
          f"{one['code_bytes_per_code']:.3f}, tar files {one['tar_bytes_per_code']:.3f} (tar headers, padding "
          f"and metadata members {one['tar_overhead_bytes'] / n_codes:.3f}, of which metadata "
          f"{meta_bytes / n_codes:.3f}), with the index "
          f"{one['total_bytes_per_code']:.3f}; float32 Kaldi ark {ark / n_codes:.3f}")


def test_shuffle_and_ranks(tmp_path):
    codes = _random_codes(40, seed=1)
    with TokenShardWriter(tmp_path, INFO, max_bytes=10_000) as w:
        for utt, c in codes.items():
            w.write(utt, c)
    order = [u for u, _, _ in read_shards(tmp_path)]
    a = [u for u, _, _ in read_shards(tmp_path, shuffle=True, seed=3)]
    b = [u for u, _, _ in read_shards(tmp_path, shuffle=True, seed=3)]
    assert a == b and a != order and sorted(a) == sorted(order)
    parts = [[u for u, _, _ in read_shards(tmp_path, rank=r, world_size=3)] for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(order) and all(parts)
    with pytest.raises(ValueError, match="rank"):
        next(read_shards(tmp_path, rank=3, world_size=3))


def test_bad_input_is_named(tmp_path):
    w = TokenShardWriter(tmp_path / "t", INFO)
    with pytest.raises(TokenShardError, match=r"'u1'.*\[0, 1024\)"):
        w.write("u1", np.array([[0, 1024]] * 8))
    with pytest.raises(TokenShardError, match="'u1'.*4 quantizer rows"):
        w.write("u1", np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(TokenShardError, match="integers"):
        w.write("u1", np.zeros((8, 3)))
    with pytest.raises(TokenShardError, match="whitespace"):
        w.write("a b", np.zeros((8, 3), dtype=np.int64))
    w.write("u1", np.zeros((8, 3), dtype=np.int64))
    with pytest.raises(TokenShardError, match="'u1' written twice"):
        w.write("u1", np.zeros((8, 3), dtype=np.int64))
    w.close()
    # another model's codes into the same directory
    with pytest.raises(TokenShardError, match="another model.*num_quantizers: 8 there, 4 now"):
        TokenShardWriter(tmp_path / "t", make_info(4, 1024))
    with pytest.raises(TokenShardError, match="not a token directory"):
        next(read_shards(tmp_path))
    # a truncated shard names the tar and the utterance
    tar = next((tmp_path / "t").glob("*.tar"))
    row = next(iter_index(tmp_path / "t"))
    with open(tar, "r+b") as f:
        f.truncate(json.loads((tmp_path / "t" / "codes-000000.jsonl").read_text())["offset"] + 10)
    with pytest.raises(TokenShardError, match=f"{tar.name}: utterance 'u1'.*truncated"):
        list(read_shards(tmp_path / "t"))
    assert row["utt"] == "u1"


_KILLED_WRITER = r"""
import sys, time, numpy as np
from xytok.tokens import TokenShardWriter, make_info
rng = np.random.default_rng(0)
with TokenShardWriter(sys.argv[1], make_info(8, 1024), prefix=sys.argv[2], max_bytes=4000) as w:
    for i in range(60):
        w.write(f"{sys.argv[2]}-u{i:03d}", rng.integers(0, 1024, size=(8, 50 + i)))
        time.sleep(0.02)
"""


def test_sigkill_resume_and_two_jobs_in_one_dir(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), "a"], env=env)
    t0 = time.time()
    while len(list(tmp_path.glob("a-*.jsonl"))) < 2 and time.time() - t0 < 60:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # codes wait in memory until a shard is full; a kill while a full one is written leaves a .tmp
    n = len(list(tmp_path.glob("a-*.jsonl")))
    half = tmp_path / f"a-{n:06d}.tar.tmp"
    half.write_bytes(b"half a tar")
    done = {u for u, _, _ in read_shards(tmp_path)}
    assert 0 < len(done) < 60  # finished shards are readable as they are
    # a second job (other prefix) runs to the end in the same directory
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), "b"], env=env, check=True)
    assert half.exists(), "job b must not touch job a's files"
    # job a again: its half-written shard is dropped, its finished utterances are skipped
    rng = np.random.default_rng(0)
    expected = {f"a-u{i:03d}": rng.integers(0, 1024, size=(8, 50 + i)) for i in range(60)}
    with TokenShardWriter(tmp_path, make_info(8, 1024), prefix="a", max_bytes=4000) as w:
        assert not half.exists()
        assert done <= w.done and len(w.done) == len(done) + 60
        for utt, c in expected.items():
            if utt not in w.done:
                w.write(utt, c)
    got = {}
    for utt, c, _ in read_shards(tmp_path):
        assert utt not in got, f"{utt} read twice"
        got[utt] = c
    assert len(got) == 120
    for utt, c in expected.items():
        np.testing.assert_array_equal(got[utt], c)


def test_tokens_module_is_below_bin():
    code = "import sys, xytok.tokens; print(sorted(m for m in sys.modules if m.startswith('xytok.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    assert "xytok.tokens" in out and "xytok.bin" not in out and "xytok.cli" not in out and "torch" not in out


# ---------------------------------------------------------------------------------- the encoder CLI
MODEL = ["--config", str(TINY_A / "config.yaml"), "--checkpoint", str(TINY_A / "model.ckpt"),
         "--no_progress", "--num_threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    a, _ = sf.read(TINY_A / "input_short.wav", dtype="float32")
    b, _ = sf.read(TINY_A / "input_batch2.wav", dtype="float32")
    wavs = {"s1-u1": a[:40000], "s1-u2": b[:27000], "s2-u3": a[5000:30000], "s2-u4": b[:1000]}  # u4: too short
    scp = []
    for utt, w in wavs.items():
        sf.write(str(d / f"{utt}.wav"), w, 16000, subtype="PCM_16")
        scp.append(f"{utt} {d}/{utt}.wav")
    (d / "wav.scp").write_text("\n".join(scp) + "\n")
    (d / "text").write_text("s1-u1 HELLO WORLD\ns1-u2 GOOD  MORNING\ns2-u4 X\n")
    (d / "utt2spk").write_text("s1-u1 s1\ns1-u2 s1\ns2-u3 s2\ns2-u4 s2\n")
    return d


def _direct(d, utts):
    from xytok import load_codec

    torch.set_num_threads(1)
    codec = load_codec(str(TINY_A / "config.yaml"), str(TINY_A / "model.ckpt"))
    out = {}
    for u in utts:
        w, _ = sf.read(d / f"{u}.wav", dtype="float32")
        out[u] = codec.encode([torch.from_numpy(w)])[0].numpy()
    return out


def test_encode_format_shards_jobs_metadata_resume(data_dir, tmp_path, caplog):
    out = tmp_path / "tokens"
    common = ["encode", *MODEL, "--format", "shards", "--text", data_dir / "text", "--utt2spk",
              data_dir / "utt2spk", "--batch_size", "2"]
    rcs = [cli.main(list(map(str, [*common, "--job", k, "--num_jobs", 2, data_dir / "wav.scp", out])))
           for k in (1, 2)]
    assert rcs == [0, 1]  # job 2 has s2-u4 (too short): reported, the rest written
    expected = _direct(data_dir, ["s1-u1", "s1-u2", "s2-u3"])
    got = {u: (c, m) for u, c, m in read_shards(out)}
    assert sorted(got) == sorted(expected)
    for u, c in expected.items():
        np.testing.assert_array_equal(got[u][0], c)
        assert got[u][1]["frames"] == c.shape[1] and got[u][1]["nq"] == 4
    assert got["s1-u1"][1]["duration"] == pytest.approx(40000 / 16000)
    assert got["s1-u2"][1]["text"] == "GOOD  MORNING" and got["s2-u3"][1]["speaker"] == "s2"
    assert "text" not in got["s2-u3"][1]
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["codes.1of2-000000.jsonl", "codes.2of2-000000.jsonl"]
    info = json.loads((out / "info.json").read_text())
    assert info["num_quantizers"] == 4 and info["codebook_size"] == 64 and info["frame_rate"] == 12.5
    # a re-run has nothing left to do but the failing utterance; finished shards are untouched
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    caplog.set_level("INFO")
    assert cli.main(list(map(str, [*common, "--job", 2, "--num_jobs", 2, data_dir / "wav.scp", out]))) == 1
    assert "resuming: 1 of 2 utterance(s)" in caplog.text
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.exists())
    assert len(list(read_shards(out))) == 3


def test_encode_format_errors(data_dir, tmp_path):
    scp = str(data_dir / "wav.scp")
    for extra, out, msg in ((["--format", "shards"], "x.scp", "ends in .scp"),
                            (["--format", "ark"], "dir", "needs OUT ending in .scp"),
                            (["--text", str(data_dir / "text")], "dir", "only applies to --format shards"),
                            (["--format", "shards", "--job", "3", "--num_jobs", "2"], "dir", "1 <= --job"),
                            (["--format", "shards", "--text", str(tmp_path / "nope")], "dir", "nope")):
        r = subprocess.run([sys.executable, "-m", "xytok", "encode", *MODEL, *extra, scp, str(tmp_path / out)],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert r.returncode != 0 and msg in r.stderr, (extra, r.stderr[-500:])
