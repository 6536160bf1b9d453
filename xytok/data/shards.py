"""Tar shards of audio for large corpora: a few hundred MB each, read in place by `xytok.audio`.

A shard is a plain (uncompressed) tar of `<utt>.<ext>` members: 16 kHz FLAC, or the source's own
compressed bytes (MP3, FLAC, Ogg/Opus) copied without re-encoding. Utterances point into it with
the wav.scp value `shard.tar:OFFSET:SIZE`, so reading one costs a seek and a read, and a corpus of
millions of utterances is a few thousand files instead of millions.

Writing is resumable: a shard is written as `<name>.tar.tmp` and renamed when full, then its
`<name>.list` (utt, wav.scp value, 16 kHz samples per line) is written atomically. A re-run finds
the utterances of the finished shards in the lists and continues after them; a half-written
`.tmp` is discarded.

The writer itself only knows members and list lines (`add_member`, `add_list_line`): xytok.tokens
uses it for shards of codec codes with its own member layout and JSON list lines.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from xytok.audio import tar_member_entry

LIST_SUFFIX = ".list"


class ShardWriter:
    """Appends members to numbered shards `<out_dir>/<prefix>-NNNNNN.tar`, rolling over at max_bytes."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str, max_bytes: int = 256 << 20,
                 list_suffix: str = LIST_SUFFIX):
        self.out_dir = Path(out_dir).resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_bytes = int(max_bytes)
        self.list_suffix = list_suffix
        # exactly `<prefix>-NNNNNN`: prefix `a` must not touch the files of a job with prefix `a-b`
        self._name = re.compile(re.escape(prefix) + r"-\d{6}")
        for tmp in self.out_dir.glob(f"{prefix}-*.tar.tmp"):  # a killed run's unfinished shard
            if self._name.fullmatch(tmp.name[: -len(".tar.tmp")]):
                tmp.unlink()
        self.index = len(self.finished_lists())
        self._tar: Optional[tarfile.TarFile] = None
        self._lines: List[str] = []  # list lines of the open shard

    def finished_lists(self) -> List[Path]:
        return sorted(p for p in self.out_dir.glob(f"{self.prefix}-*{self.list_suffix}")
                      if self._name.fullmatch(p.name[: -len(self.list_suffix)]))

    def done(self) -> Dict[str, Tuple[str, int]]:
        """utt -> (wav.scp value, num_samples) of every utterance in a finished shard."""
        out: Dict[str, Tuple[str, int]] = {}
        for lst in self.finished_lists():
            for utt, value, n in read_list(lst):
                out[utt] = (value, n)
        return out

    def _path(self, index: int) -> Path:
        return self.out_dir / f"{self.prefix}-{index:06d}.tar"

    @property
    def current_path(self) -> Path:
        """The shard that the next member goes to."""
        return self._path(self.index)

    @property
    def shard_bytes(self) -> int:
        """Bytes written to the open shard so far (0 when none is open)."""
        return self._tar.offset if self._tar is not None else 0

    def add_member(self, name: str, data: bytes) -> int:
        """Append member `name` to the open shard (opening one if needed); returns the byte offset of
        its data in the tar. Rolling over is the caller's choice (`close_shard`)."""
        if self._tar is None:
            self._fileobj = open(str(self.current_path) + ".tmp", "wb")
            self._tar = tarfile.open(fileobj=self._fileobj, mode="w", format=tarfile.PAX_FORMAT)
        info = tarfile.TarInfo(name=name)
        info.size = len(data)
        info.mtime = 0
        header = info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
        offset = self._tar.offset + len(header)
        self._tar.addfile(info, io.BytesIO(data))
        return offset

    def add_list_line(self, line: str) -> None:
        """A line of the open shard's list (written when the shard is finished)."""
        self._lines.append(line)

    def add(self, utt: str, data: bytes, ext: str, num_samples: int) -> None:
        """An audio member `<utt>.<ext>`, listed as `utt shard.tar:OFFSET:SIZE num_samples`."""
        path = self.current_path
        offset = self.add_member(f"{utt}.{ext}", data)
        self.add_list_line(f"{utt} {tar_member_entry(str(path), offset, len(data))} {int(num_samples)}")
        if self.shard_bytes >= self.max_bytes:
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
        lst = path.with_name(path.name[: -len(".tar")] + self.list_suffix)
        tmp = str(lst) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for line in self._lines:
                f.write(line + "\n")
        os.replace(tmp, lst)
        self._tar, self._lines = None, []
        self.index += 1

    def abort_shard(self) -> None:
        """Drop the open shard (its `.tmp`): a re-run writes its members again."""
        if self._tar is None:
            return
        try:
            self._fileobj.close()
        finally:
            tmp = str(self.current_path) + ".tmp"
            if os.path.exists(tmp):
                os.remove(tmp)
            self._tar, self._lines = None, []

    def close(self) -> None:
        self.close_shard()


def read_list(path: Path) -> Iterator[Tuple[str, str, int]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            utt, value, n = line.split()
            yield utt, value, int(n)
