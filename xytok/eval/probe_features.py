"""Probe features at corpus scale: float16 shards on disk, streamed through a bounded shuffle buffer.

train-clean-100 is ~4.5 M frames x 3072 dims of z_q (~28 GB as float16, ~55 GB as float32): the
probe never holds the set. On disk (one store per data set, ``FEAT_DIR/NAME/``):

  shard-00000.npy ...   float16 (frames, dim): utterances' frames concatenated, in sorted-id order
  index.tsv             ``utt <TAB> shard <TAB> offset <TAB> frames`` per featurised utterance
  NAME.meta.json        (beside the directory) what the store was built from; written last, so a
                        store without it is unfinished (see ``ShardWriter``: builds resume)

Training reads it with ``plan_epoch`` + ``BatchStream``: shards in random order, their
utterances into a shuffle buffer of at most ``capacity`` frames; whenever the next utterance would
overflow it, a random part of the buffer (about half, whole batches) is cut into length-sorted
batches, emitted in random order. Memory held: the buffer plus the one shard being read.
When the whole set fits the buffer, an epoch is one length-sorted, group-shuffled pass.
``streaming_stats`` gives the per-dimension mean/std in one pass (float64 accumulators).
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np

from xytok.checkpoint import atomic_write

log = logging.getLogger("xytok.probe")

STORE_FORMAT = "float16-shards-v1"
STORE_DTYPE = np.float16
DEFAULT_SHARD_MB = 64.0  # ~10900 frames of 3072 dims: a 100000-frame buffer spans ~9 shards
FLOAT16_MAX = float(np.finfo(np.float16).max)


# ----------------------------------------------------------------------------- writing
class ShardWriter:
    """Builds one store directory; resumable. ``key`` (JSON-able) names what is being built: a
    directory left by a killed build with the same key continues after its last complete shard
    (``done`` = utterances already handled); any other content is wiped first.

    Each shard is written to a temp file and renamed, then its index lines are appended to
    ``progress.tsv``; a kill in between leaves a shard that is not in progress.tsv, removed on resume."""

    def __init__(self, directory: str | os.PathLike, key: dict, shard_mb: float = DEFAULT_SHARD_MB):
        if shard_mb <= 0:
            raise ValueError(f"shard size must be > 0 MB, got {shard_mb}")
        self.dir = Path(directory)
        self.key = json.loads(json.dumps(key))  # as it reads back from build.json
        self.shard_bytes = shard_mb * 2 ** 20
        self.dim: int | None = None
        self.entries: list[tuple[str, int, int, int]] = []   # committed (utt, shard, offset, frames)
        self.skipped: dict[str, str] = {}
        self._pending: list[tuple[str, np.ndarray]] = []
        self._pending_frames = 0
        build = self.dir / "build.json"
        resumed = build.is_file() and json.loads(build.read_text()).get("key") == self.key
        if resumed:
            self._resume()
        else:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
            build.write_text(json.dumps({"key": self.key}))
            (self.dir / "progress.tsv").write_text("")
        self.resumed = resumed

    def _resume(self):
        for line in (self.dir / "progress.tsv").read_text().splitlines():
            f = line.split("\t")
            if len(f) == 3 and f[1] == "SKIP":
                self.skipped[f[0]] = f[2]
            elif len(f) == 5:
                self.entries.append((f[0], int(f[1]), int(f[2]), int(f[3])))
                self.dim = int(f[4])
            # a torn last line (killed mid-append) is ignored: its shard is redone
        n_shards = len({e[1] for e in self.entries})
        for p in self.dir.iterdir():  # unfinished temp files, shards written but not committed
            if p.name.endswith(".tmp") or (p.name.startswith("shard-") and _shard_number(p) >= n_shards):
                p.unlink()
        good = [f"{u}\t{s}\t{o}\t{n}\t{self.dim}\n" for u, s, o, n in self.entries]
        good += [f"{u}\tSKIP\t{why}\n" for u, why in self.skipped.items()]
        (self.dir / "progress.tsv").write_text("".join(good))

    @property
    def done(self) -> set:
        return {e[0] for e in self.entries} | set(self.skipped) | {u for u, _ in self._pending}

    @property
    def n_shards(self) -> int:
        return len({e[1] for e in self.entries})

    def add(self, utt: str, feats) -> None:
        """One utterance's (frames, dim) features; ValueError naming it if they cannot be stored."""
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise ValueError(f"{utt}: features must be (frames > 0, dim), got shape {feats.shape}")
        if self.dim is None:
            self.dim = int(feats.shape[1])
        elif feats.shape[1] != self.dim:
            raise ValueError(f"{utt}: features have {feats.shape[1]} dims, the store has {self.dim}")
        half = feats.astype(STORE_DTYPE, copy=False)
        if not np.isfinite(half).all():  # one check: NaN/Inf in the input, or beyond float16's range
            if not np.isfinite(feats).all():
                raise ValueError(f"{utt}: features hold NaN/Inf")
            raise ValueError(f"{utt}: feature magnitude {float(np.abs(feats).max()):g} exceeds the float16 "
                             f"range ({FLOAT16_MAX:g})")
        self._pending.append((utt, half))
        self._pending_frames += feats.shape[0]
        if self._pending_frames * self.dim * 2 >= self.shard_bytes:
            self.flush()

    def skip(self, utt: str, reason: str) -> None:
        """An utterance that could not be featurised (recorded at once: a resume does not retry it)."""
        reason = " ".join(str(reason).split())  # one line, no tabs
        self.skipped[utt] = reason
        self._append(f"{utt}\tSKIP\t{reason}\n")

    def _append(self, text: str) -> None:
        with open(self.dir / "progress.tsv", "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def flush(self) -> None:
        if not self._pending:
            return
        shard = self.n_shards
        data = np.concatenate([f for _, f in self._pending], axis=0)
        atomic_write(self.dir / f"shard-{shard:05d}.npy", lambda tmp: _save_npy(tmp, data))
        lines, offset = [], 0
        for utt, f in self._pending:
            self.entries.append((utt, shard, offset, len(f)))
            lines.append(f"{utt}\t{shard}\t{offset}\t{len(f)}\t{self.dim}\n")
            offset += len(f)
        self._append("".join(lines))
        self._pending, self._pending_frames = [], 0

    def finish(self) -> dict:
        """Flush the last shard and write index.tsv; returns the facts for the store's meta."""
        self.flush()
        atomic_write(self.dir / "index.tsv", lambda tmp: Path(tmp).write_text(
            "".join(f"{u}\t{s}\t{o}\t{n}\n" for u, s, o, n in self.entries)))
        return {"format": STORE_FORMAT, "dtype": "float16", "dim": self.dim, "n_shards": self.n_shards,
                "n_utts": len(self.entries), "n_frames": int(sum(e[3] for e in self.entries))}


def _save_npy(path, data):
    with open(path, "wb") as f:
        np.save(f, data)


def _shard_number(p: Path) -> int:
    try:
        return int(p.name.split("-")[1].split(".")[0])
    except (IndexError, ValueError):
        return 1 << 30  # not one of ours: removed with the uncommitted shards


# ----------------------------------------------------------------------------- reading
class FeatureStore:
    """Read side of a finished store directory (lazy: only the index is in memory)."""

    copies = True  # utterances are copied out of a shard, so the shard can be freed

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        index = self.dir / "index.tsv"
        if not index.is_file():
            raise FileNotFoundError(f"{self.dir}: no index.tsv (not a finished float16 feature store)")
        self.index: dict[str, tuple[int, int, int]] = {}
        shards: dict[int, list[str]] = {}
        for n, line in enumerate(index.read_text().splitlines(), 1):
            f = line.split("\t")
            if len(f) != 4:
                raise ValueError(f"{index}:{n}: expected 'utt shard offset frames', got {line!r}")
            utt, s, o, t = f[0], int(f[1]), int(f[2]), int(f[3])
            self.index[utt] = (s, o, t)
            shards.setdefault(s, []).append(utt)
        self.shards = [shards.get(s, []) for s in range(max(shards, default=-1) + 1)]
        self.lengths = {u: v[2] for u, v in self.index.items()}
        self.dim = None
        if self.shards:
            self.dim = int(np.load(self._shard_path(0), mmap_mode="r").shape[1])

    def _shard_path(self, s: int) -> Path:
        return self.dir / f"shard-{s:05d}.npy"

    def read_shard(self, s: int) -> "_ShardView":
        """Shard s read whole (one sequential read; no memory map, whose pages would stay resident)."""
        path = self._shard_path(s)
        data = np.load(path)
        want = sum(self.index[u][2] for u in self.shards[s])
        if data.ndim != 2 or data.shape[0] != want or data.dtype != STORE_DTYPE:
            raise ValueError(f"{path}: {data.dtype} {data.shape}, the index expects float16 ({want}, dim): "
                             "a damaged store, delete it to rebuild")
        return _ShardView(data, {u: self.index[u][1:] for u in self.shards[s]})

    def get(self, utt: str) -> np.ndarray:
        """One utterance's float16 frames (reads only those)."""
        s, o, t = self.index[utt]
        return np.array(np.load(self._shard_path(s), mmap_mode="r")[o:o + t])

    def __len__(self):
        return len(self.index)

    def items(self):
        """(utt, float16 frames) for every utterance, shard by shard (one shard in memory at a time)."""
        for s in range(len(self.shards)):
            view = self.read_shard(s)
            for u in self.shards[s]:
                yield u, view[u].copy()


class _ShardView:
    def __init__(self, data: np.ndarray, where: dict):
        self.data, self.where = data, where
        self.frames = int(data.shape[0])

    def __getitem__(self, utt):
        o, t = self.where[utt]
        return self.data[o:o + t]


class MemoryFeatures:
    """The same reading interface over in-memory (utt, (frames, dim)) items: one 'shard' of all."""

    copies = False

    def __init__(self, items):
        pairs = list(items.items()) if isinstance(items, dict) else list(items)
        self.items_ = dict(pairs)
        if len(self.items_) != len(pairs):
            raise ValueError("duplicate utterance ids among the probe features")
        self.shards = [list(self.items_)]
        self.lengths = {u: len(f) for u, f in self.items_.items()}
        self.dim = int(next(iter(self.items_.values())).shape[1]) if self.items_ else None

    def read_shard(self, s: int) -> dict:
        return self.items_

    def get(self, utt):
        return self.items_[utt]

    def __len__(self):
        return len(self.items_)

    def items(self):
        return iter(self.items_.items())


def as_feature_source(items):
    """A FeatureStore / MemoryFeatures as is; a list or dict of (utt, frames) -> MemoryFeatures."""
    if isinstance(items, (FeatureStore, MemoryFeatures)):
        return items
    return MemoryFeatures(items)


# ----------------------------------------------------------------------------- statistics
def streaming_stats(source, utts=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-dimension (mean, population std, frames) over the frames of `utts` (default: all), one
    pass shard by shard, merging per-utterance moments in float64 (Chan et al.'s pairwise update),
    so neither the whole set nor its float64 copy is ever in memory."""
    want = set(source.lengths) if utts is None else set(utts)
    n, mean, m2 = 0, None, None
    for s, shard_utts in enumerate(source.shards):
        chosen = [u for u in shard_utts if u in want]
        if not chosen:
            continue
        view = source.read_shard(s)
        for u in chosen:
            x = np.asarray(view[u], dtype=np.float64)
            nb = x.shape[0]
            if nb == 0:
                continue
            mb = x.mean(0)
            m2b = ((x - mb) ** 2).sum(0)
            if mean is None:
                n, mean, m2 = nb, mb, m2b
                continue
            delta = mb - mean
            tot = n + nb
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta ** 2 * (n * nb / tot)
            n = tot
        del view
    if not n:
        raise ValueError("no frames to compute the normalisation statistics from")
    return mean, np.sqrt(m2 / n), n


# ----------------------------------------------------------------------------- batching
def plan_epoch(source, utts, batch_size: int, capacity: int | None, rng: random.Random | None,
               order_rng: random.Random | None = None) -> list:
    """The events of one pass over `utts` (a subset of the source): ("load", shard), ("add", utt),
    ("free",) after a shard's last utterance, ("batch", [utts]). Only lengths are used, so the
    number of steps is known before any feature is read.

    Training (rng given): shards in `order_rng` order, utterances shuffled within a shard; when the
    next utterance would overflow `capacity` frames, a random ~half of the buffer (whole batches) is
    cut into (length, id)-sorted batches emitted in `rng` order. Evaluation (rng None): files' order,
    the whole buffer cut into sorted batches each time. capacity None = unbounded."""
    want = set(utts)
    lengths = source.lengths
    capacity = float("inf") if not capacity else int(capacity)
    shard_ids = [s for s, us in enumerate(source.shards) if any(u in want for u in us)]
    if rng is not None and order_rng is not None:
        order_rng.shuffle(shard_ids)
    events, buffer, held = [], [], 0

    def cut(chosen):
        chosen = sorted(chosen, key=lambda u: (lengths[u], u))
        groups = [chosen[i:i + batch_size] for i in range(0, len(chosen), batch_size)]
        if rng is not None:
            rng.shuffle(groups)
        events.extend(("batch", g) for g in groups)

    def drain(final: bool):
        nonlocal buffer, held
        if final or rng is None:
            chosen, buffer = buffer, []
        else:
            rng.shuffle(buffer)
            k, frames = 0, 0
            while k < len(buffer) and frames < capacity / 2:
                frames += lengths[buffer[k]]
                k += 1
            # whole batches (at least one when the buffer has it): the one partial batch of an
            # epoch is its last
            k = max(k - k % batch_size, min(batch_size, len(buffer)))
            chosen, buffer = buffer[:k], buffer[k:]
        held -= sum(lengths[u] for u in chosen)
        cut(chosen)

    for s in shard_ids:
        order = [u for u in source.shards[s] if u in want]
        if rng is not None and order_rng is not None:
            order_rng.shuffle(order)
        events.append(("load", s))
        for u in order:
            while buffer and held + lengths[u] > capacity:
                drain(final=False)
            events.append(("add", u))
            buffer.append(u)
            held += lengths[u]
        events.append(("free",))
    drain(final=True)
    return events


def count_batches(events) -> int:
    return sum(1 for e in events if e[0] == "batch")


class BatchStream:
    """Runs a plan: yields [(utt, frames)] batches; ``held_frames`` / ``peak_held_frames`` account
    for every frame it holds (buffered utterances, the shard being read, the batch last yielded)."""

    def __init__(self, source, events):
        self.source, self.events = source, events
        self.held_frames = self.peak_held_frames = 0
        self.frames_read = 0

    def _hold(self, n):
        self.held_frames += n
        self.peak_held_frames = max(self.peak_held_frames, self.held_frames)

    def __iter__(self):
        buffer: dict = {}
        shard, shard_frames = None, 0
        for ev in self.events:
            kind = ev[0]
            if kind == "load":
                shard = self.source.read_shard(ev[1])
                shard_frames = shard.frames if self.source.copies else 0
                self._hold(shard_frames)
                self.frames_read += shard_frames
            elif kind == "add":
                f = shard[ev[1]]
                if self.source.copies:
                    f = f.copy()
                    self._hold(len(f))
                buffer[ev[1]] = f
            elif kind == "free":
                shard = None
                self._hold(-shard_frames)
                shard_frames = 0
            else:
                batch = [(u, buffer.pop(u)) for u in ev[1]]
                yield batch
                if self.source.copies:  # the consumer is done with it
                    self._hold(-sum(len(f) for _, f in batch))
                del batch
        assert not buffer, "plan left utterances in the buffer"


def pad_batch(batch) -> tuple[np.ndarray, np.ndarray]:
    """[(utt, (T_i, D))] -> zero-padded (B, max T, D) in the features' dtype, lengths (B,)."""
    lengths = np.array([len(f) for _, f in batch], dtype=np.int64)
    first = batch[0][1]
    out = np.zeros((len(batch), int(lengths.max()), first.shape[1]), dtype=first.dtype)
    for j, (_, f) in enumerate(batch):
        out[j, : len(f)] = f
    return out, lengths


def read_meta(path: str | os.PathLike) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {}


__all__ = ["STORE_FORMAT", "ShardWriter", "FeatureStore", "MemoryFeatures", "as_feature_source",
           "streaming_stats", "plan_epoch", "count_batches", "BatchStream", "pad_batch", "read_meta"]
