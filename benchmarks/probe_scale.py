#!/usr/bin/env python3
"""Does the text-alignment probe fit train-clean-100 in bounded memory?

Writes a synthetic training set the size of train-clean-100's z_q (default 4.5 M frames at
12.5 Hz x 3072 dims: ~28 GB of float16 shards, through the probe's own ShardWriter, straight to
disk), then runs what stage 10 runs on it: one loader epoch through the shuffle buffer (as
training reads it, without the model), and the probe's train_and_evaluate (the streaming
normalisation pass + --steps BiLSTM-CTC steps). Prints the peak RSS (the process's ru_maxrss)
after each phase, frames/s for writing, loading, statistics and training, and the disk size.
The data are deleted at the end unless --keep. Goal: peak RSS < 4 GB at full size.

    python benchmarks/probe_scale.py                                 # full size (check df -h /tmp first)
    python benchmarks/probe_scale.py --frames 200000 --steps 3       # a quick look
    python benchmarks/probe_scale.py --device cuda --steps 200       # the BiLSTM on a GPU

Synthetic features: random float16 (values in (-2, 2), no NaN/Inf) and random letter transcripts
of one character per frame; utterance lengths uniform in 1-35 s (mean ~18 s, ~20000 utterances;
LibriSpeech's mean is 12.7 s: longer utterances are the harder case for a batch's memory).
"""
from __future__ import annotations

import argparse
import logging
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xytok.eval.probe import ProbeConfig, train_and_evaluate  # noqa: E402
from xytok.eval.probe_features import (DEFAULT_SHARD_MB, BatchStream, FeatureStore, ShardWriter,  # noqa: E402
                                       pad_batch, plan_epoch)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def current_rss_gb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2 ** 30


def report(phase: str) -> None:
    now = current_rss_gb()
    print(f"  [{phase}] peak RSS so far {peak_rss_gb():.2f} GB" + (f", now {now:.2f} GB" if now is not None else ""),
          flush=True)


def random_frames(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Random float16 in (-2, 2) from random bits (fast: no float maths on ~14 G values): sign bit
    random, exponent field < 16, i.e. finite and below 2 in magnitude."""
    bits = rng.integers(0, 1 << 16, size=(n, dim), dtype=np.uint16) & np.uint16(0xBFFF)
    return bits.view(np.float16)


def build(out: Path, frames: int, dim: int, shard_mb: float, seed: int) -> tuple[dict, dict, float]:
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < frames:
        n = int(rng.integers(13, 438))  # 1-35 s at 12.5 Hz
        n = min(n, frames - total)
        lengths.append(n)
        total += n
    writer = ShardWriter(out / "train", {"benchmark": "probe_scale", "frames": frames, "dim": dim, "seed": seed},
                         shard_mb=shard_mb)
    texts, letters, text_rng = {}, "abcdefghijklmnopqrstuvwxyz", random.Random(seed)
    t0, last = time.time(), time.time()
    width = len(str(len(lengths)))
    for i, n in enumerate(lengths):
        utt = f"utt{i:0{width}d}"
        if utt not in writer.done:
            writer.add(utt, random_frames(rng, n, dim))
        chars = "".join(text_rng.choice(letters) for _ in range(max(1, n)))
        texts[utt] = " ".join(chars[k:k + 5] for k in range(0, len(chars), 5))
        if time.time() - last > 30:
            el = time.time() - t0
            print(f"  writing: {i + 1}/{len(lengths)} utts, {sum(lengths[:i + 1]) / el:.0f} frames/s, "
                  f"ETA {el / (i + 1) * (len(lengths) - i - 1):.0f} s", flush=True)
            last = time.time()
    info = writer.finish()
    return info, texts, time.time() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=4_500_000, help="training frames (train-clean-100: ~4.5 M at 12.5 Hz)")
    p.add_argument("--dim", type=int, default=3072, help="feature dims (XY z_q: 3072)")
    p.add_argument("--out", default=None, help="directory for the shards (default: a new one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the data (a rerun with the same --out reuses them)")
    p.add_argument("--steps", type=int, default=5, help="probe training steps")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--shuffle_buffer_frames", type=int, default=ProbeConfig.shuffle_buffer_frames)
    p.add_argument("--shard_mb", type=float, default=DEFAULT_SHARD_MB)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="probe_scale_", dir="/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    need = args.frames * args.dim * 2
    free = shutil.disk_usage(out).free
    if need > 0.9 * free:
        print(f"need {need / 1e9:.1f} GB in {out}, only {free / 1e9:.1f} GB free", file=sys.stderr)
        return 1
    print(f"probe_scale: {args.frames} frames x {args.dim} dims float16 ({need / 1e9:.1f} GB) in {out}")
    try:
        info, texts, secs = build(out, args.frames, args.dim, args.shard_mb, args.seed)
        disk = sum(f.stat().st_size for f in (out / "train").iterdir())
        print(f"write: {info['n_utts']} utts, {info['n_frames']} frames in {info['n_shards']} shards, "
              f"{disk / 1e9:.2f} GB on disk, {secs:.0f} s, {info['n_frames'] / secs:.0f} frames/s")
        report("write")

        store = FeatureStore(out / "train")
        utts = list(store.lengths)
        t0 = time.time()
        stream = BatchStream(store, plan_epoch(store, utts, args.batch_size, args.shuffle_buffer_frames,
                                               random.Random(0), random.Random(1)))
        n_batches = 0
        for batch in stream:
            pad_batch(batch)  # what each training step builds before the device copy
            n_batches += 1
        secs = time.time() - t0
        print(f"load: one epoch, {n_batches} batches of {args.batch_size}, {stream.frames_read / secs:.0f} frames/s "
              f"({stream.frames_read * args.dim * 2 / secs / 1e6:.0f} MB/s); loader held at most "
              f"{stream.peak_held_frames} frames ({stream.peak_held_frames * args.dim * 2 / 2 ** 30:.2f} GB; "
              f"buffer {args.shuffle_buffer_frames} + one shard)")
        report("load")

        valid = [(u, store.get(u)) for u in utts[:8]]
        cfg = ProbeConfig(hidden=args.hidden, batch_size=args.batch_size, epochs=1, max_steps=args.steps,
                          device=args.device, shuffle_buffer_frames=args.shuffle_buffer_frames, seed=args.seed)
        res = train_and_evaluate(store, valid, texts, texts, cfg)
        print(f"stats: {res['n_train_frames']} frames in {res['stats_seconds']:.0f} s, "
              f"{res['n_train_frames'] / res['stats_seconds']:.0f} frames/s (one streaming pass, float64)")
        print(f"train: {res['train_steps']} steps on {res['device']} in {res['train_seconds']:.1f} s, "
              f"{res['train_frames_seen'] / res['train_seconds']:.0f} frames/s (codec-rate frames; "
              f"x4 repeated into the BiLSTM), {res['train_seconds'] / max(1, res['train_steps']):.2f} s/step; "
              f"{n_batches} steps per epoch")
        report("train")
        goal = "met" if peak_rss_gb() < 4 else "NOT met"
        print(f"peak RSS {peak_rss_gb():.2f} GB (goal < 4 GB: {goal}); disk {disk / 1e9:.2f} GB")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            print(f"deleted {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
