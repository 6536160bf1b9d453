"""Tar shards of audio for large corpora: a few hundred MB each, read in place by `xytok.audio`.

A shard is a plain (uncompressed) tar of `<utt>.<ext>` members: 16 kHz FLAC, or the source's own
compressed bytes (MP3, FLAC, Ogg/Opus) copied without re-encoding. Utterances point into it with
the wav.scp value `shard.tar:OFFSET:SIZE`, so reading one costs a seek and a read, and a corpus of
millions of utterances is a few thousand files instead of millions.

Writing is resumable: a shard is written as `<name>.tar.tmp` and renamed when full, then its
`<name>.list` (utt, wav.scp value, 16 kHz samples per line) is written atomically. A re-run finds
the utterances of the finished shards in the lists and continues after them; a half-written
`.tmp` is discarded.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from xytok.audio import tar_member_entry

LIST_SUFFIX = ".list"


class ShardWriter:
    """Appends members to numbered shards `<out_dir>/<prefix>-NNNNNN.tar`, rolling over at max_bytes."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str, max_bytes: int = 256 << 20):
        self.out_dir = Path(out_dir).resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_bytes = int(max_bytes)
        for tmp in self.out_dir.glob(f"{prefix}-*.tar.tmp"):  # a killed run's unfinished shard
            tmp.unlink()
        self.index = len(self.finished_lists())
        self._tar: Optional[tarfile.TarFile] = None
        self._rows: List[Tuple[str, int, int, int]] = []  # utt, data offset, size, num_samples

    def finished_lists(self) -> List[Path]:
        return sorted(self.out_dir.glob(f"{self.prefix}-*{LIST_SUFFIX}"))

    def done(self) -> Dict[str, Tuple[str, int]]:
        """utt -> (wav.scp value, num_samples) of every utterance in a finished shard."""
        out: Dict[str, Tuple[str, int]] = {}
        for lst in self.finished_lists():
            for utt, value, n in read_list(lst):
                out[utt] = (value, n)
        return out

    def _path(self, index: int) -> Path:
        return self.out_dir / f"{self.prefix}-{index:06d}.tar"

    def add(self, utt: str, data: bytes, ext: str, num_samples: int) -> None:
        if self._tar is None:
            self._fileobj = open(str(self._path(self.index)) + ".tmp", "wb")
            self._tar = tarfile.open(fileobj=self._fileobj, mode="w", format=tarfile.PAX_FORMAT)
        info = tarfile.TarInfo(name=f"{utt}.{ext}")
        info.size = len(data)
        info.mtime = 0
        header = info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
        offset = self._tar.offset + len(header)
        self._tar.addfile(info, io.BytesIO(data))
        self._rows.append((utt, offset, len(data), int(num_samples)))
        if self._tar.offset >= self.max_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._fileobj.flush()
        os.fsync(self._fileobj.fileno())
        self._fileobj.close()
        path = self._path(self.index)
        os.replace(str(path) + ".tmp", path)
        lst = path.with_suffix(LIST_SUFFIX)
        tmp = str(lst) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for utt, off, size, n in self._rows:
                f.write(f"{utt} {tar_member_entry(str(path), off, size)} {n}\n")
        os.replace(tmp, lst)
        self._tar, self._rows = None, []
        self.index += 1

    def close(self) -> None:
        self.close_shard()


def read_list(path: Path) -> Iterator[Tuple[str, str, int]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            utt, value, n = line.split()
            yield utt, value, int(n)
