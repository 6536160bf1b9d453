"""The data layer: lazy manifests from Kaldi dirs, tar shards (stage 2), exactly-once coverage over
ranks x workers, whole utterances for items with text, and exact SIGKILL-resume on shards."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recipe_helpers import sigkill_when_exists
from test_train_stage1 import env, make_data_dir, make_spm, train_cmd, train_losses, write_config

from xytok.data.dataset import (DataError, SpeechTextDataset, build_dataset, build_sampler, check_data_config,
                                collate)
from xytok.data.manifest import Manifest, manifest_for

REPO = Path(__file__).resolve().parents[1]


def _kaldi_dir(root: Path, n: int, seed: int = 0, sr: int = 16000, fmt: str = "wav", sort: bool = True):
    rng = np.random.default_rng(seed)
    d = root / "data"
    (d / "audio").mkdir(parents=True)
    rows = []
    for i in range(n):
        utt = f"spk{i % 3}-u{i:04d}"
        length = int(rng.integers(int(0.5 * sr), int(1.5 * sr)))
        x = 0.2 * np.sin(np.arange(length) * rng.uniform(0.01, 0.1)).astype(np.float32)
        path = d / "audio" / f"{utt}.{fmt}"
        sf.write(path, x, sr)
        rows.append((utt, str(path), round(length * 16000 / sr), f"word{i} text {i}"))
    rows.sort(key=lambda r: r[0].encode())
    if not sort:
        rows = rows[::-1]
    (d / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p, _, _ in rows))
    (d / "utt2num_samples").write_text("".join(f"{u} {n_}\n" for u, _, n_, _ in rows))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, _, _, t in rows))
    return d, rows


def test_kaldi_dir_to_manifest_streaming_and_cached(tmp_path):
    d, rows = _kaldi_dir(tmp_path, 7, sort=False)  # unsorted tables: converted from sorted copies
    m = Manifest(manifest_for(d))
    assert len(m) == 7 and m.meta["num_with_text"] == 7
    ids = [m[i]["id"] for i in range(len(m))]
    assert ids == sorted(u for u, *_ in rows)
    by_id = {u: (p, n, t) for u, p, n, t in rows}
    for i in range(len(m)):
        it = m[i]
        assert (it["audio"], it["num_samples"], it["text"]) == by_id[it["id"]]
        assert int(m.num_samples[i]) == it["num_samples"]
    first = (d / "manifest" / "meta.json").stat().st_mtime_ns
    manifest_for(d)
    assert (d / "manifest" / "meta.json").stat().st_mtime_ns == first, "an unchanged dir reuses its cache"
    (d / "text").write_text((d / "text").read_text().replace("word0 ", "changed "))
    assert "changed" in json.dumps(list(Manifest(manifest_for(d))))


def test_lengths_come_from_metadata_and_missing_ones_are_errors(tmp_path):
    d, rows = _kaldi_dir(tmp_path, 3)
    (d / "utt2num_samples").write_text("".join(f"{u} {n}\n" for u, _, n, _ in rows[:2]))
    with pytest.raises(DataError, match=f"no entry for utterance '{rows[2][0]}'"):
        manifest_for(d)
    (d / "utt2num_samples").unlink()
    (d / "utt2dur").write_text("".join(f"{u} 1.5\n" for u, *_ in rows))
    assert {int(x) for x in Manifest(manifest_for(d)).num_samples} == {24000}


def test_segments_become_items_with_offsets(tmp_path):
    d = tmp_path / "seg"
    d.mkdir()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 48000).astype(np.float32)
    sf.write(d / "reco.wav", x, 16000, subtype="FLOAT")
    (d / "wav.scp").write_text(f"reco {d / 'reco.wav'}\n")
    (d / "segments").write_text("reco-a reco 0.00 1.00\nreco-b reco 1.00 2.96\n")
    (d / "text").write_text("reco-a first part\nreco-b second part\n")
    ds = SpeechTextDataset(str(d), crop_seconds=None)
    items = {ds[i]["utt_id"]: ds[i] for i in range(len(ds))}
    b = items["reco-b"]
    assert b["start"] == 16000 and b["num_samples"] == (31360 // 1280) * 1280 and b["text"] == "second part"
    assert torch.equal(b["wav"], torch.from_numpy(x[16000:16000 + b["num_samples"]]))


def test_text_items_are_whole_and_crop_with_asr_is_an_error(tmp_path):
    d, rows = _kaldi_dir(tmp_path, 5)
    conf = {"data": {"crop_seconds": 0.64, "max_frames": 1000, "max_batch_size": 4}, "loss_weights": {"asr": 1.0}}
    with pytest.raises(DataError, match="crop_seconds=0.64 with the ASR loss on"):
        check_data_config(conf)
    check_data_config({"data": {"crop_seconds": 0.64}, "loss_weights": {"asr": 0.0}})  # recon only: fine
    with pytest.raises(DataError, match="text would describe audio the model does not see"):
        SpeechTextDataset(str(d), crop_seconds=0.64)
    ds = SpeechTextDataset(str(d), crop_seconds=None, max_utt_seconds=1.2)
    kept = [ds[i] for i in range(len(ds))]
    n_long = sum(1 for *_r, n, _ in [(u, p, n, t) for u, p, n, t in rows] if n > 1.2 * 16000)
    assert len(kept) == 5 - n_long and ds.num_dropped["too_long"] == n_long
    for it in kept:
        full = dict((u, n) for u, _, n, _ in rows)[it["utt_id"]]
        assert it["start"] == 0 and it["num_samples"] == full // 1280 * 1280 and it["text"]


def _shard(data_dir: Path, out: Path, shard_mb: float, extra=()):
    cmd = [sys.executable, "-m", "xytok.bin.dump_audio", "--wav_scp", str(data_dir / "wav.scp"),
           "--out_dir", str(out / "data"), "--out_scp", str(out / "wav.scp"),
           "--out_utt2num_samples", str(out / "utt2num_samples"), "--audio_format", "shards",
           "--shard_prefix", "shard-1", "--shard_size_mb", str(shard_mb), *extra]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)


def test_dump_shards_keeps_compressed_sources_and_resumes(tmp_path):
    d, rows = _kaldi_dir(tmp_path, 6, sr=24000, fmt="mp3")
    out = tmp_path / "dump"
    # a corrupt source in the middle: the run stops naming it, keeping the finished shards
    bad = rows[3][0]
    (d / "audio" / f"{bad}.mp3").write_bytes(b"not audio at all")
    scp = (d / "wav.scp").read_text()
    lengths = ["--utt2num_samples", str(d / "utt2num_samples")]
    res = _shard(d, out, 0.001, lengths)
    assert res.returncode == 1 and bad in res.stderr
    assert not (out / "wav.scp").exists()
    finished = sorted((out / "data").glob("*.tar"))
    assert len(finished) >= 3 and not list((out / "data").glob("*.tmp"))
    before = {p: p.stat().st_mtime_ns for p in finished}
    sf.write(d / "audio" / f"{bad}.mp3", np.zeros(24000, np.float32) + 0.1, 24000)
    (d / "wav.scp").write_text(scp)
    res = _shard(d, out, 0.001, lengths)
    assert res.returncode == 0, res.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished shards are not rewritten"
    assert "from an earlier run" in res.stderr
    entries = dict(line.split() for line in (out / "wav.scp").read_text().splitlines())
    assert sorted(entries) == sorted(u for u, *_ in rows)
    from xytok.audio import load_audio, parse_tar_member

    for utt, value in entries.items():
        tar, off, size = parse_tar_member(value)
        with tarfile.open(tar) as t:
            member = t.getmember(f"{utt}.mp3")
            assert (member.offset_data, member.size) == (off, size)
        src = d / "audio" / f"{utt}.mp3"
        with open(tar, "rb") as f:
            f.seek(off)
            assert f.read(size) == src.read_bytes(), "MP3 bytes are kept as they are"
        wav, info = load_audio(value, 16000)
        assert info.orig_sample_rate == 24000 and abs(len(wav) - sf.info(src).frames * 2 / 3) < 2000


def _coverage(dataset, config, rank, world, workers):
    seen = []

    def collate_with_worker(items):
        info = torch.utils.data.get_worker_info()
        batch = collate(items)
        batch["worker"] = info.id if info else -1
        return batch

    sampler = build_sampler(dataset, config, train=True, epoch=3, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_with_worker,
                                         num_workers=workers)
    for batch in loader:
        seen += [(u, rank, batch["worker"]) for u in batch["utt_ids"]]
    return seen, len(sampler)


def test_two_ranks_two_workers_cover_each_item_exactly_once(tmp_path):
    d, rows = _kaldi_dir(tmp_path, 37)
    config = {"seed": 1, "loss_weights": {"asr": 1.0},
              "data": {"max_frames": 700, "max_batch_size": 5, "crop_seconds": None, "bucket_size": 2}}
    dataset = build_dataset(str(d), config, train=True)
    seen, counts = [], set()
    for rank in range(2):
        s, n = _coverage(dataset, config, rank, 2, 2)
        seen += s
        counts.add(n)
    assert len(counts) == 1, "every rank has the same number of batches"
    utts = [u for u, _, _ in seen]
    assert sorted(utts) == sorted(u for u, *_ in rows), "every item exactly once per epoch"
    assert {(r, w) for _, r, w in seen} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_dump_batches_whole_utterances_with_paper_config(tmp_path):
    d, rows = _kaldi_dir(tmp_path, 6)
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "xytok.bin.train", "--config", str(REPO / "egs/librispeech/conf/train_stage1.yaml"),
           "--train_data", str(d), "--output_dir", str(out), "--dump_batches", "2"]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    items = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    assert items and {it["batch"] for it in items} <= {0, 1}
    assert not (out / "checkpoint.pth").exists() and not (out / "train.log").exists()
    bad = subprocess.run(cmd + ["--data.crop_seconds", "5.12"], env=env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "with the ASR loss on" in bad.stderr


@pytest.fixture(scope="module")
def shards_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    kaldi = make_data_dir(root, "train", 11, 0)
    sharded = root / "sharded"
    res = _shard(kaldi, sharded, 0.05)
    assert res.returncode == 0, res.stderr
    (sharded / "text").write_text((kaldi / "text").read_text())
    return {"train": sharded, "spm": make_spm(root)}


def test_shards_sigkill_resume_matches_uninterrupted_run(shards_setup, tmp_path):
    train = shards_setup["train"]
    m = Manifest(manifest_for(train))
    assert m.meta["num_shards"] >= 3
    config = write_config(tmp_path, shards_setup["spm"], max_steps=6, num_workers=2)
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(config, ref, train), env=env(), check=True, capture_output=True, timeout=300)
    expected = train_losses(ref)
    assert sorted(expected) == list(range(1, 7))
    run = tmp_path / "killed"
    sigkill_when_exists(train_cmd(config, run, train), run / "checkpoints" / "step2.pth", 240, env=env())
    state = torch.load(run / "checkpoint.pth", weights_only=False)
    assert 2 <= state["step"] < 6 and state["batch_in_epoch"] > 0, "the kill must land mid-epoch"
    subprocess.run(train_cmd(config, run, train), env=env(), check=True, capture_output=True, timeout=300)
    got = train_losses(run)
    for step in expected:
        assert got[step] == expected[step], f"step {step}: resumed {got[step]} != uninterrupted {expected[step]}"
