"""Lazy training manifests: one JSON line per utterance + memory-mapped numpy index.

A manifest is a directory:

  items.jsonl        one object per utterance, in Kaldi (byte) order of the ids:
                       id           utterance id
                       audio        any wav.scp value: a path, `cmd |`, `x.ark:N` or `x.tar:OFFSET:SIZE`
                       num_samples  length at 16 kHz (metadata: never measured by opening audio)
                       offset       (segments only) first 16 kHz sample of the utterance in `audio`
                       text         transcript (absent when the data dir has none for it)
                       speaker      (optional) speaker id
                       feats        (optional) kaldiio rxfilename of the stage-3 log-mel
  offsets.npy        int64 byte offset of each line in items.jsonl
  num_samples.npy    int64 lengths (what the sampler buckets on)
  groups.npy         int32 id of the tar shard an item's audio lives in (-1: a file of its own)
  meta.json          format version, counts, the source and its fingerprint

The index arrays are memory-mapped, and an item is parsed only when it is read (seek + one line),
so a process holds ~20 bytes per utterance however large the corpus is. A Kaldi data dir is
converted in one streaming pass (its tables are sorted, so they are merge-joined line by line) and
cached in `<data dir>/manifest/`, rebuilt when a source table changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

from xytok.data.datadir import atomic_directory
from xytok.data.table import TableError, UnsortedTableError, iter_table

log = logging.getLogger("xytok.data")

SAMPLE_RATE = 16000
FORMAT_VERSION = 1
ITEMS = "items.jsonl"
CACHE_DIRNAME = "manifest"
# Kaldi tables a manifest is built from; their sizes and mtimes are its fingerprint.
SOURCE_TABLES = ("wav.scp", "text", "utt2num_samples", "utt2dur", "segments", "utt2spk", "feats.scp")


class DataError(ValueError):
    """A problem with a data dir or manifest, naming the file and/or utterance."""


class UnsortedDataError(DataError):
    """A Kaldi table not in LC_ALL=C order (the conversion then sorts copies of the tables)."""


# -- reading ---------------------------------------------------------------------------------------
def is_manifest_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / ITEMS).is_file() and (p / "meta.json").is_file()


class Manifest:
    """Random access to a manifest's items; picklable for DataLoader workers (re-opens lazily)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_manifest_dir(self.path):
            raise DataError(f"{self.path}: not a manifest (needs {ITEMS} and meta.json)")
        with open(self.path / "meta.json") as f:
            self.meta: Dict[str, Any] = json.load(f)
        if self.meta.get("version") != FORMAT_VERSION:
            raise DataError(f"{self.path}/meta.json: manifest format {self.meta.get('version')!r}, "
                            f"this xytok reads {FORMAT_VERSION} (delete the directory to rebuild it)")
        self._open_index()

    def _open_index(self) -> None:
        self.offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
        self.num_samples = np.load(self.path / "num_samples.npy", mmap_mode="r")
        self.groups = np.load(self.path / "groups.npy", mmap_mode="r")
        self._fh = None
        self._pid = None

    def __getstate__(self):
        return {"path": self.path, "meta": self.meta}

    def __setstate__(self, state):
        self.path, self.meta = state["path"], state["meta"]
        self._open_index()

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if self._fh is None or self._pid != os.getpid():  # one handle per (worker) process
            self._fh = open(self.path / ITEMS, "rb")
            self._pid = os.getpid()
        self._fh.seek(int(self.offsets[i]))
        line = self._fh.readline()
        try:
            return json.loads(line)
        except ValueError as e:
            raise DataError(f"{self.path / ITEMS}: item {i} at byte {int(self.offsets[i])}: bad JSON: {e}") from None

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        with open(self.path / ITEMS, "rb") as f:
            for line in f:
                yield json.loads(line)


# -- writing ---------------------------------------------------------------------------------------
def _tar_of(audio: str) -> Optional[str]:
    from xytok.audio import parse_tar_member

    member = parse_tar_member(audio)
    return member[0] if member else None


class _ArrayFile:
    """An append-only .npy-like buffer on disk (raw), turned into a .npy at the end."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self.raw = open(str(path) + ".raw", "wb")
        self.buf: list = []
        self.count = 0

    def append(self, v) -> None:
        self.buf.append(v)
        if len(self.buf) >= 65536:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.raw.write(np.asarray(self.buf, dtype=self.dtype).tobytes())
            self.count += len(self.buf)
            self.buf = []

    def close(self) -> None:
        self.flush()
        self.raw.close()
        data = np.memmap(str(self.path) + ".raw", dtype=self.dtype, mode="r", shape=(self.count,)) \
            if self.count else np.zeros(0, dtype=self.dtype)
        np.save(self.path, data)
        del data
        os.remove(str(self.path) + ".raw")


def write_manifest(items: Iterable[Dict[str, Any]], out_dir: str | os.PathLike,
                   meta: Optional[Dict[str, Any]] = None, progress=None) -> Dict[str, Any]:
    """Stream items into a manifest directory, atomically (temp dir + rename). Returns meta.json.

    Every item needs `id`, `audio` and an integer `num_samples` > 0; ids must be unique.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp_dir:
        tmp = Path(tmp_dir)
        offsets = _ArrayFile(tmp / "offsets.npy", np.int64)
        lengths = _ArrayFile(tmp / "num_samples.npy", np.int64)
        groups = _ArrayFile(tmp / "groups.npy", np.int32)
        n = n_text = total = 0
        group_id, last_tar = -1, None
        next_group = 0
        prev_id = None
        missing_text: list = []
        with open(tmp / ITEMS, "wb") as f:
            for item in items:
                utt = item.get("id")
                if not utt or not item.get("audio"):
                    raise DataError(f"manifest item {n}: needs 'id' and 'audio' (got {item!r:.200})")
                ns = item.get("num_samples")
                if not isinstance(ns, (int, np.integer)) or ns <= 0:
                    raise DataError(f"utterance {utt!r}: num_samples must be a positive integer, got {ns!r}")
                if prev_id is not None and utt == prev_id:
                    raise DataError(f"duplicate utterance id {utt!r}")
                prev_id = utt
                tar = _tar_of(item["audio"])
                if tar is None:
                    group_id, last_tar = -1, None
                elif tar != last_tar:
                    group_id, last_tar = next_group, tar
                    next_group += 1
                offsets.append(f.tell())
                lengths.append(int(ns))
                groups.append(group_id)
                if item.get("text"):
                    n_text += 1
                elif len(missing_text) < 5:
                    missing_text.append(utt)
                f.write(json.dumps(item, ensure_ascii=False).encode("utf-8") + b"\n")
                n += 1
                total += int(ns)
                if progress is not None:
                    progress(n)
        for a in (offsets, lengths, groups):
            a.close()
        if n == 0:
            raise DataError(f"{out_dir}: no utterances to write")
        full_meta = dict(meta or {})
        full_meta.update({"version": FORMAT_VERSION, "num_items": n, "num_with_text": n_text,
                          "missing_text_examples": missing_text, "num_shards": next_group,
                          "hours": round(total / SAMPLE_RATE / 3600, 4)})
        with open(tmp / "meta.json", "w") as f:
            json.dump(full_meta, f, indent=1, ensure_ascii=False)
    return full_meta


# -- Kaldi data dir -> manifest ---------------------------------------------------------------------
def _iter_table(path: Path) -> Iterator[Tuple[str, str, int]]:
    """(key, value, line number) of a sorted Kaldi table, streamed in constant memory."""
    try:
        yield from iter_table(path, strict=True)
    except UnsortedTableError as e:
        raise UnsortedDataError(str(e)) from None
    except TableError as e:
        raise DataError(str(e)) from None


class SortedLookup:
    """Looks up the values of a sorted table for increasing keys, reading it once."""

    def __init__(self, path):
        self.path = Path(path) if path is not None else None
        self.it = _iter_table(self.path) if self.path is not None else iter(())
        self.cur = next(self.it, None)

    def get(self, key: str) -> Optional[str]:
        kb = key.encode("utf-8")
        while self.cur is not None and self.cur[0].encode("utf-8") < kb:
            self.cur = next(self.it, None)
        if self.cur is not None and self.cur[0] == key:
            return self.cur[1]
        return None


def fingerprint(data_dir: Path) -> Dict[str, Any]:
    out = {}
    for name in SOURCE_TABLES:
        p = data_dir / name
        if p.exists():
            st = p.stat()
            out[name] = [st.st_size, st.st_mtime_ns]
    return out


def iter_kaldi_items(data_dir: str | os.PathLike, fs: int = SAMPLE_RATE) -> Iterator[Dict[str, Any]]:
    """Manifest items of a Kaldi data dir, streamed in id order.

    Lengths come from utt2num_samples (16 kHz samples, recipe stage 2), else utt2dur, else the
    segment times; an utterance with none of them is an error (the audio is never opened here).
    """
    d = Path(data_dir)
    wav_scp = d / "wav.scp"
    if not wav_scp.exists():
        raise DataError(f"{d}: no wav.scp (run recipe stage 2 first)")
    opt = lambda name: (d / name) if (d / name).exists() else None  # noqa: E731
    text, n_samp, dur = SortedLookup(opt("text")), SortedLookup(opt("utt2num_samples")), SortedLookup(opt("utt2dur"))
    spk, feats = SortedLookup(opt("utt2spk")), SortedLookup(opt("feats.scp"))
    segments = opt("segments")
    if segments is not None:
        # Segments index recordings: wav.scp is per recording (usually far fewer lines than utterances).
        recordings = {k: v for k, v, _ in _iter_table(wav_scp)}
        rows = ((utt, value) for utt, value, _ in _iter_table(segments))
    else:
        recordings = None
        rows = ((utt, value) for utt, value, _ in _iter_table(wav_scp))
    if opt("utt2num_samples") is None and opt("utt2dur") is None and segments is None:
        raise DataError(f"{d}: no utt2num_samples or utt2dur: training takes lengths from metadata "
                        f"(recipe stage 2 writes utt2num_samples)")
    for utt, value in rows:
        item: Dict[str, Any] = {"id": utt}
        if recordings is not None:
            parts = value.split()
            if len(parts) != 3:
                raise DataError(f"{segments}: utterance {utt!r}: expected '<utt> <recording> <start> <end>'")
            reco, start, end = parts[0], float(parts[1]), float(parts[2])
            if reco not in recordings:
                raise DataError(f"{segments}: utterance {utt!r}: recording {reco!r} is not in {wav_scp}")
            item["audio"] = recordings[reco]
            item["offset"] = int(round(start * fs))
            seg_len = int(round(end * fs)) - item["offset"]
        else:
            item["audio"] = value
            seg_len = None
        ns, seconds = n_samp.get(utt), dur.get(utt)
        if ns is not None:
            try:
                num = int(ns)
            except ValueError:
                raise DataError(f"{d}/utt2num_samples: utterance {utt!r}: not an integer: {ns!r}") from None
        elif seconds is not None:
            num = int(round(float(seconds) * fs))
        elif seg_len is not None:
            num = seg_len
        else:
            raise DataError(f"{d}/utt2num_samples: no entry for utterance {utt!r}")
        if num <= 0:
            raise DataError(f"{d}: utterance {utt!r} has empty audio (0 samples)")
        item["num_samples"] = num
        t = text.get(utt)
        if t:
            item["text"] = t
        s = spk.get(utt)
        if s:
            item["speaker"] = s
        fe = feats.get(utt)
        if fe:
            item["feats"] = fe
        yield item


def _cache_dir_for(data_dir: Path) -> Path:
    """`<data dir>/manifest`, or a per-user cache when the data dir is read-only."""
    if os.access(data_dir, os.W_OK):
        return data_dir / CACHE_DIRNAME
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xytok" / "manifests"
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return root / f"{data_dir.name}-{key}"


def manifest_for(path: str | os.PathLike, build: bool = True) -> Path:
    """The manifest directory for `path` (a manifest dir, or a Kaldi data dir converted and cached).

    With build=False a missing or stale cache is an error instead of being (re)built: DDP ranks
    other than the first call it after rank 0 built it.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such data dir or manifest")
    if is_manifest_dir(p):
        return p
    if not p.is_dir():
        raise DataError(f"{p}: neither a Kaldi data dir nor a manifest directory")
    cache = _cache_dir_for(p)
    fp = fingerprint(p)
    if is_manifest_dir(cache):
        try:
            with open(cache / "meta.json") as f:
                meta = json.load(f)
            if meta.get("source_fingerprint") == fp and meta.get("version") == FORMAT_VERSION:
                return cache
        except (OSError, ValueError):
            pass
    if not build:
        raise DataError(f"{cache}: manifest of {p} is missing or out of date")
    from xytok.progress import ProgressLog

    n_lines = _count_lines(p / ("segments" if (p / "segments").exists() else "wav.scp"))
    prog = ProgressLog(n_lines, f"manifest {p}", logger=log)
    meta_in = {"source": str(p.resolve()), "source_fingerprint": fp}
    try:
        meta = write_manifest(iter_kaldi_items(p), cache, meta=meta_in, progress=prog.update)
    except UnsortedDataError as e:
        # Kaldi tables are sorted by convention; when one is not, merge-join sorted copies (GNU sort
        # works in bounded memory) rather than loading the tables into dicts.
        log.warning("%s; converting from sorted copies of the tables", e)
        with tempfile.TemporaryDirectory(prefix="xytok-sorted-") as tmp:
            for name in SOURCE_TABLES:
                if (p / name).exists():
                    with open(Path(tmp) / name, "wb") as out:
                        subprocess.run(["sort", str(p / name)], stdout=out, check=True,
                                       env=dict(os.environ, LC_ALL="C"))
            meta = write_manifest(iter_kaldi_items(tmp), cache, meta=meta_in, progress=prog.update)
    log.info("%s: manifest with %d utterances (%.2f h, %d with text) in %s", p, meta["num_items"],
             meta["hours"], meta["num_with_text"], cache)
    return cache


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n
