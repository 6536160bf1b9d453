"""Token datasets: a corpus's codec codes as compact tar shards, for training language models.

Layout of an output directory (``xytok encode --format shards IN OUT_DIR`` writes it)::

    OUT_DIR/info.json                 format, num_quantizers, codebook_size, frame rate, dtype
    OUT_DIR/<prefix>-000000.tar       a shard (a few tens of MB): members
                                        info.json    the same as OUT_DIR/info.json
                                        index.jsonl  one JSON row per utterance (see below)
                                        codes.u16    every utterance's codes, concatenated
    OUT_DIR/<prefix>-000000.jsonl     the shard's index: the rows of index.jsonl plus "offset",
                                      the byte offset of the utterance's codes in the tar file

Codes are little-endian uint16 (codebooks up to 65536 entries), each utterance's (nq, T) matrix
in row-major order: exactly 2 bytes per code. Putting a whole shard's codes in one tar member
(rather than one member per utterance, as WebDataset does) keeps the tar overhead to a few KB per
shard instead of 512-1023 bytes per utterance, which for 10-s utterances (8 x 125 codes) would
be half the size of the codes themselves. The tars need no library (``tar xf`` shows the
members; ``np.fromfile`` reads ``codes.u16``) and the ``.jsonl`` indexes let a reader seek to
any utterance without scanning tars. A row::

    {"utt": "1089-134686-0000", "start": 0, "nq": 8, "frames": 130, "duration": 10.435,
     "text": "HE HOPED ...", "speaker": "1089", "offset": 2560}

``start`` counts uint16 values from the start of ``codes.u16``; ``text`` and ``speaker`` are there
when the encoder was given them.

Writing (:class:`TokenShardWriter`) is resumable like the audio shards (xytok.data.shards, whose
writer it uses): a shard is written as ``.tar.tmp``, renamed when full, then its index is written
atomically; a killed run leaves at most an unfinished ``.tmp`` that the next run deletes, and the
next run skips the utterances already in any finished shard of OUT_DIR. Several jobs (GPUs) write
into one OUT_DIR with different prefixes; readers take every finished index, sorted by name.

Reading (:func:`read_shards`) streams shard by shard: memory holds one index and one utterance.

This module sits below xytok.bin (imports only numpy, the stdlib and xytok.data.shards).
"""
from __future__ import annotations

import json
import os
import random
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np

from xytok.data.shards import ShardWriter

FORMAT = "xytok-tokens"
VERSION = 1
INFO_NAME = "info.json"
INDEX_SUFFIX = ".jsonl"
CODES_MEMBER = "codes.u16"
INDEX_MEMBER = "index.jsonl"
CODE_DTYPE = np.dtype("<u2")
# `<prefix>-NNNNNN.jsonl` as xytok.data.shards names a finished shard's list
_INDEX_NAME = re.compile(r"^(?P<prefix>.+)-(?P<num>\d{6})\.jsonl$")
_LOCATION_KEYS = ("start", "offset")


class TokenShardError(ValueError):
    """A malformed token directory, shard or utterance; the message names the file and utterance."""


# ---------------------------------------------------------------------------------------- info
def make_info(num_quantizers: int, codebook_size: int, frame_rate: float = 12.5,
              sample_rate: int = 16000, **extra: Any) -> Dict[str, Any]:
    """The ``info.json`` of a token directory (extra keys, e.g. the model, are kept)."""
    if not 0 < int(codebook_size) <= 1 << 16:
        raise TokenShardError(f"codebook_size {codebook_size} does not fit uint16 codes (max 65536)")
    return {"format": FORMAT, "version": VERSION, "dtype": "uint16", "num_quantizers": int(num_quantizers),
            "codebook_size": int(codebook_size), "frame_rate": float(frame_rate),
            "sample_rate": int(sample_rate), **extra}


def read_info(out_dir) -> Dict[str, Any]:
    path = Path(out_dir) / INFO_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenShardError(f"{path}: not found ({out_dir} is not a token directory written by "
                              f"`xytok encode --format shards`)") from None
    except (OSError, ValueError) as e:
        raise TokenShardError(f"{path}: cannot read: {e}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise TokenShardError(f"{path}: not an {FORMAT} info file")
    if info.get("version") != VERSION:
        raise TokenShardError(f"{path}: format version {info.get('version')} (this xytok reads {VERSION})")
    return info


# Keys that must agree between jobs writing into the same directory.
_INFO_KEYS = ("format", "version", "dtype", "num_quantizers", "codebook_size", "frame_rate", "sample_rate")


def _publish_info(out_dir: Path, info: Dict[str, Any]) -> None:
    path = out_dir / INFO_NAME
    if path.exists():
        old = read_info(out_dir)
        diff = {k: (old.get(k), info.get(k)) for k in _INFO_KEYS if old.get(k) != info.get(k)}
        if diff:
            raise TokenShardError(f"{path}: the directory holds codes of another model ("
                                  + ", ".join(f"{k}: {a} there, {b} now" for k, (a, b) in diff.items())
                                  + "); use another output directory")
        return
    tmp = out_dir / f".{INFO_NAME}.tmp{os.getpid()}"  # several jobs may publish at once: same content
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- indexes
def list_indexes(out_dir) -> List[Path]:
    """Finished shard indexes of a token directory, in name order (prefix, then shard number)."""
    d = Path(out_dir)
    if not d.is_dir():
        raise TokenShardError(f"{out_dir}: not a directory")
    return sorted((p for p in d.iterdir() if _INDEX_NAME.match(p.name)), key=lambda p: p.name.encode("utf-8"))


def _read_index(path: Path) -> List[Dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for key in ("utt", "start", "offset", "nq", "frames"):
                    row[key]  # noqa: B018 - presence check
            except (ValueError, KeyError, TypeError) as e:
                raise TokenShardError(f"{path}:{lineno}: malformed index row ({e}): {line.strip()[:200]!r}") from None
            rows.append(row)
    return rows


def iter_index(out_dir) -> Iterator[Dict[str, Any]]:
    """The metadata rows of every utterance (no codes read), with "shard" = the tar's file name."""
    for idx in list_indexes(out_dir):
        shard = idx.name[: -len(INDEX_SUFFIX)] + ".tar"
        for row in _read_index(idx):
            yield dict(row, shard=shard)


def done_utterances(out_dir) -> Set[str]:
    """Ids of the utterances in every finished shard of out_dir (any prefix)."""
    if not Path(out_dir).is_dir():
        return set()
    return {row["utt"] for row in iter_index(out_dir)}


# ---------------------------------------------------------------------------------------- writing
def _check_utt(utt: str) -> None:
    if not isinstance(utt, str) or not utt or any(c.isspace() for c in utt):
        raise TokenShardError(f"invalid utterance id {utt!r}: must be non-empty without whitespace")


def as_uint16_codes(codes, utt: str, codebook_size: Optional[int] = None) -> np.ndarray:
    """(nq, T) integer codes -> C-ordered little-endian uint16, checking the value range."""
    if hasattr(codes, "detach"):  # torch tensor
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise TokenShardError(f"utterance {utt!r}: codes must be a (nq, T) matrix with T > 0, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise TokenShardError(f"utterance {utt!r}: codes must be integers, got dtype {codes.dtype}")
    hi = (1 << 16) if codebook_size is None else int(codebook_size)
    lo_v, hi_v = int(codes.min()), int(codes.max())
    if lo_v < 0 or hi_v >= hi:
        raise TokenShardError(f"utterance {utt!r}: code values must be in [0, {hi}), got [{lo_v}, {hi_v}]")
    return np.ascontiguousarray(codes, dtype=CODE_DTYPE)


class TokenShardWriter:
    """Writes utterances' codes into ``<out_dir>/<prefix>-NNNNNN.tar`` shards (see the module doc).

    ``info``: :func:`make_info` of the codec (published as ``out_dir/info.json``; a directory
    holding another model's codes is refused). ``done`` is the set of utterances already in a
    finished shard of out_dir (any prefix): the caller skips them, :meth:`write` refuses them.
    A shard is closed when its codes reach ``max_bytes``; memory holds one shard's codes.
    Use as a context manager: leaving the block by an exception drops the unfinished shard.
    """

    def __init__(self, out_dir, info: Dict[str, Any], prefix: str = "codes", max_bytes: int = 32 << 20):
        if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", prefix or ""):
            raise TokenShardError(f"shard prefix {prefix!r}: use letters, digits, '_', '.', '-'")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TokenShardError(f"{out_dir}: exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.info = dict(info)
        _publish_info(self.out_dir, self.info)
        self.nq = int(self.info["num_quantizers"])
        self.codebook_size = int(self.info["codebook_size"])
        self.max_bytes = int(max_bytes)
        if self.max_bytes <= 0:
            raise TokenShardError(f"max_bytes must be > 0, got {max_bytes}")
        # The index list is the shard's "finished" mark, so ShardWriter gives resumability.
        self._shards = ShardWriter(self.out_dir, prefix, self.max_bytes, list_suffix=INDEX_SUFFIX)
        self.done = done_utterances(self.out_dir)
        self._rows: List[Dict[str, Any]] = []
        self._chunks: List[bytes] = []
        self._bytes = 0
        self._written: Set[str] = set()
        self.count = 0
        self.num_shards = 0  # finished by this writer
        self._closed = False

    def write(self, utt: str, codes, duration: Optional[float] = None, **meta: Any) -> None:
        """Add one utterance. ``meta`` (e.g. text=..., speaker=...) goes into its index row; None
        values are left out."""
        if self._closed:
            raise TokenShardError(f"{self.out_dir}: writer already closed")
        _check_utt(utt)
        if utt in self.done or utt in self._written:
            raise TokenShardError(f"{self.out_dir}: utterance {utt!r} written twice")
        arr = as_uint16_codes(codes, utt, self.codebook_size)
        if arr.shape[0] != self.nq:
            raise TokenShardError(f"utterance {utt!r}: codes have {arr.shape[0]} quantizer rows, "
                                  f"{self.out_dir / INFO_NAME} says {self.nq}")
        clash = set(meta) & {"utt", "nq", "frames", "duration", *_LOCATION_KEYS, "shard"}
        if clash:
            raise TokenShardError(f"utterance {utt!r}: reserved metadata key(s) {sorted(clash)}")
        row: Dict[str, Any] = {"utt": utt, "start": self._bytes // CODE_DTYPE.itemsize,
                               "nq": int(arr.shape[0]), "frames": int(arr.shape[1])}
        if duration is not None:
            row["duration"] = round(float(duration), 6)
        row.update({k: v for k, v in meta.items() if v is not None})
        data = arr.tobytes()
        self._rows.append(row)
        self._chunks.append(data)
        self._bytes += len(data)
        self._written.add(utt)
        self.count += 1
        if self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Finish the current shard (tar + index) if it holds any utterance."""
        if not self._rows:
            return
        w = self._shards
        index = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._rows).encode("utf-8")
        info = (json.dumps(self.info, sort_keys=True) + "\n").encode("utf-8")
        try:
            w.add_member(INFO_NAME, info)
            w.add_member(INDEX_MEMBER, index)
            base = w.add_member(CODES_MEMBER, b"".join(self._chunks))
            for r in self._rows:
                w.add_list_line(json.dumps(dict(r, offset=base + 2 * r["start"]), ensure_ascii=False))
            w.close_shard()
        except BaseException:
            w.abort_shard()
            raise
        self.num_shards += 1
        self._rows, self._chunks, self._bytes = [], [], 0

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True

    def abort(self) -> None:
        """Drop the utterances not yet in a finished shard (a re-run writes them again)."""
        self._shards.abort_shard()
        self._rows, self._chunks, self._bytes = [], [], 0
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# ---------------------------------------------------------------------------------------- reading
def _read_codes(f, tar_path: Path, row: Dict[str, Any]) -> np.ndarray:
    nq, frames = int(row["nq"]), int(row["frames"])
    size = nq * frames * CODE_DTYPE.itemsize
    f.seek(int(row["offset"]))
    data = f.read(size)
    if len(data) != size:
        raise TokenShardError(f"{tar_path}: utterance {row['utt']!r}: shard ends after {len(data)} of "
                              f"{size} bytes at offset {row['offset']} (truncated shard?)")
    return np.frombuffer(data, dtype=CODE_DTYPE).reshape(nq, frames)


def read_shards(out_dir, dtype=np.int64, shuffle: bool = False, seed: int = 0,
                rank: int = 0, world_size: int = 1) -> Iterator[Tuple[str, np.ndarray, Dict[str, Any]]]:
    """Yield ``(utt_id, codes, meta)`` for every utterance of a token directory.

    ``codes``: integer array (nq, T) (``dtype``, int64 by default; None keeps the stored uint16).
    ``meta``: the index row (utt, nq, frames, duration, and text / speaker when written) plus
    ``shard`` (the tar's file name). Order: shards in name order, utterances in written order;
    ``shuffle`` permutes the shards and the utterances within each shard (deterministic given
    ``seed``), which keeps reading streaming. ``rank``/``world_size`` take every world_size-th shard
    (data-parallel LM training). Memory: one shard's index and one utterance.
    """
    out_dir = Path(out_dir)
    read_info(out_dir)  # refuses a directory that is not a token directory
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    indexes = list_indexes(out_dir)
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(indexes)
    for idx in indexes[rank::world_size]:
        rows = _read_index(idx)
        if shuffle:
            rng.shuffle(rows)
        tar_path = idx.with_name(idx.name[: -len(INDEX_SUFFIX)] + ".tar")
        try:
            f = open(tar_path, "rb")
        except OSError as e:
            raise TokenShardError(f"{idx}: cannot open its shard: {e}") from None
        with f:
            for row in rows:
                codes = _read_codes(f, tar_path, row)
                meta = {k: v for k, v in row.items() if k not in _LOCATION_KEYS}
                meta["shard"] = tar_path.name
                yield row["utt"], (codes if dtype is None else codes.astype(dtype)), meta


def read_shard_tar(tar_path) -> Iterator[Tuple[str, np.ndarray, Dict[str, Any]]]:
    """The utterances of one shard read from the tar alone (its own index.jsonl and codes.u16 members),
    e.g. a shard copied without its ``.jsonl``; codes are uint16."""
    tar_path = Path(tar_path)
    try:
        with tarfile.open(tar_path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if INDEX_MEMBER not in members or CODES_MEMBER not in members:
                raise TokenShardError(f"{tar_path}: lacks {INDEX_MEMBER} or {CODES_MEMBER}: not a token shard")
            index = tar.extractfile(members[INDEX_MEMBER]).read().decode("utf-8")
            base = members[CODES_MEMBER].offset_data
    except (tarfile.TarError, OSError) as e:
        raise TokenShardError(f"{tar_path}: cannot read tar: {e}") from None
    with open(tar_path, "rb") as f:
        for line in index.splitlines():
            if line.strip():
                row = json.loads(line)
                row["offset"] = base + 2 * int(row["start"])
                meta = {k: v for k, v in row.items() if k not in _LOCATION_KEYS}
                yield row["utt"], _read_codes(f, tar_path, row), dict(meta, shard=tar_path.name)


def storage_stats(out_dir) -> Dict[str, Any]:
    """Sizes of a token directory: codes, code bytes (2 per code), tar overhead (headers, padding,
    the metadata members) and the external indexes, with bytes per code of each."""
    codes = utts = 0
    for row in iter_index(out_dir):
        codes += int(row["nq"]) * int(row["frames"])
        utts += 1
    idx = list_indexes(out_dir)
    tars = [p.with_name(p.name[: -len(INDEX_SUFFIX)] + ".tar") for p in idx]
    tar_bytes = sum(p.stat().st_size for p in tars)
    index_bytes = sum(p.stat().st_size for p in idx)
    code_bytes = codes * CODE_DTYPE.itemsize
    per = (lambda b: b / codes) if codes else (lambda b: float("nan"))
    return {"utterances": utts, "shards": len(tars), "codes": codes, "code_bytes": code_bytes,
            "tar_bytes": tar_bytes, "tar_overhead_bytes": tar_bytes - code_bytes, "index_bytes": index_bytes,
            "code_bytes_per_code": per(code_bytes), "tar_bytes_per_code": per(tar_bytes),
            "total_bytes_per_code": per(tar_bytes + index_bytes)}


__all__ = ["TokenShardError", "TokenShardWriter", "make_info", "read_info", "list_indexes", "iter_index",
           "done_utterances", "read_shards", "read_shard_tar", "storage_stats", "as_uint16_codes"]
