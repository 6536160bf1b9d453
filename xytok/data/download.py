"""Resumable HTTP(S) download with size / md5 checks, and archive extraction with a `.complete` marker.

Used by egs/librispeech/local/data.sh (OpenSLR resource 12). Command line:

    python -m xytok.data.download --url URL [--url MIRROR ...] --md5 MD5 --dest FILE [--extract_to DIR]

Resume works with the HTTP Range header: a partial download lives in `FILE.part` and the next run asks
for the remaining bytes. If the server ignores Range (200 instead of 206), the download restarts.
A file is moved to its final name only after its size and md5 are verified, so a half-written or
corrupt archive never looks finished.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("xytok.download")

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or its verification failed; the message names the URL/file and the problem."""


def md5sum(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    return file_digest(path, "md5", chunk)


def file_digest(path: str | os.PathLike, algorithm: str = "md5", chunk: int = CHUNK) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _progress(done: int, total: Optional[int], t0: float, start_bytes: int, name: str) -> None:
    el = max(time.time() - t0, 1e-6)
    rate = (done - start_bytes) / el
    if total:
        eta = (total - done) / rate if rate > 0 else float("inf")
        log.info("%s: %.1f/%.1f MB (%.1f%%) %.2f MB/s ETA %.0fs", name, done / 1e6, total / 1e6,
                 100.0 * done / total, rate / 1e6, eta)
    else:
        log.info("%s: %.1f MB %.2f MB/s", name, done / 1e6, rate / 1e6)


def _fetch(url: str, part: Path, timeout: float, max_bytes: Optional[int]) -> Optional[int]:
    """Append the rest of `url` to `part`. Returns the total size if the server told us.

    `max_bytes` stops after that many new bytes (used by tests to simulate an interrupted download).
    """
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "xytok-download/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # requested range not satisfiable: we already have everything
            return have
        raise
    with resp:
        total = None
        if have and resp.status == 206:
            cr = resp.headers.get("Content-Range", "")  # "bytes start-end/total"
            if "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
                total = int(cr.rsplit("/", 1)[1])
            mode = "ab"
            log.info("resuming %s at byte %d", url, have)
        else:
            if have:
                log.warning("server ignored the Range request for %s; restarting from 0", url)
            have = 0
            clen = resp.headers.get("Content-Length")
            total = int(clen) if clen and clen.isdigit() else None
            mode = "wb"
        t0, last, done, start = time.time(), 0.0, have, have
        with open(part, mode) as out:
            while True:
                want = CHUNK if max_bytes is None else min(CHUNK, max_bytes - (done - start))
                if want <= 0:
                    return total
                block = resp.read(want)
                if not block:
                    break
                out.write(block)
                done += len(block)
                if time.time() - last > 10:
                    _progress(done, total, t0, start, part.name)
                    last = time.time()
        return total


def download(urls: Sequence[str] | str, dest: str | os.PathLike, md5: Optional[str] = None,
             size: Optional[int] = None, timeout: float = 60.0, retries: int = 3,
             max_bytes: Optional[int] = None, sha256: Optional[str] = None) -> Path:
    """Download to `dest` (resuming `dest.part`), verify size and md5 (or sha256), return `dest`.

    An existing `dest` with the right checksum is kept as is. `urls` are tried in order (mirrors).
    Raises DownloadError naming the file on a checksum/size mismatch (the bad partial is removed).
    sha256 is for corpora whose publisher gives no md5 (e.g. LibriTTS: published sha256 + size).
    """
    if md5 is not None and sha256 is not None:
        raise ValueError("give md5 or sha256, not both")
    algo, digest = ("sha256", sha256) if sha256 is not None else ("md5", md5)
    if isinstance(urls, str):
        urls = [urls]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if digest is None or file_digest(dest, algo) == digest:
            log.info("%s already downloaded", dest)
            return dest
        log.warning("%s exists but its %s is wrong; downloading again", dest, algo)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    errors = []
    total = None
    for url in urls:
        for attempt in range(1, retries + 1):
            try:
                total = _fetch(url, part, timeout, max_bytes)
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                errors.append(f"{url} (try {attempt}): {e}")
                log.warning("download of %s failed (try %d/%d): %s", url, attempt, retries, e)
                time.sleep(min(2 ** attempt, 10) if attempt < retries else 0)
        else:
            continue
        break
    else:
        raise DownloadError(f"could not download {dest.name}; tried:\n  " + "\n  ".join(errors))

    got = part.stat().st_size
    if max_bytes is not None and (total is None or got < total):
        # Deliberately stopped early (tests): leave the .part for the next run to resume.
        raise DownloadError(f"{part}: stopped after {got} bytes (max_bytes={max_bytes}); re-run to resume")
    expect = size if size is not None else total
    if expect is not None and got != expect:
        raise DownloadError(f"{part}: size {got} bytes, expected {expect}; re-run to resume")
    if digest is not None:
        actual = file_digest(part, algo)
        if actual != digest:
            part.unlink()
            raise DownloadError(f"{dest}: {algo} mismatch (got {actual}, expected {digest}); "
                                "the corrupt download was removed, re-run to fetch it again")
    os.replace(part, dest)
    log.info("downloaded %s (%d bytes)", dest, got)
    return dest


def extract(archive: str | os.PathLike, to_dir: str | os.PathLike, marker: Optional[str | os.PathLike] = None) -> Path:
    """Extract a tar(.gz) into `to_dir`; write `marker` (default `to_dir/.<archive>.complete`) after success."""
    archive, to_dir = Path(archive), Path(to_dir)
    marker = Path(marker) if marker else to_dir / f".{archive.name}.complete"
    if marker.exists():
        log.info("%s already extracted (%s)", archive.name, marker)
        return marker
    to_dir.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s into %s", archive, to_dir)
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:  # refuse path traversal / absolute paths from a hostile archive
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise DownloadError(f"{archive}: unsafe path in archive: {m.name}")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(to_dir, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{archive}: cannot extract ({e})") from e
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{archive.name}\n")
    return marker


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m xytok.data.download",
        description="Resumable download (HTTP Range) with size and md5/sha256 verification and optional tar extraction.")
    p.add_argument("--url", action="append", required=True, help="URL; repeat for mirrors (tried in order)")
    p.add_argument("--dest", required=True, help="output file (partial data goes to DEST.part)")
    digest = p.add_mutually_exclusive_group()
    digest.add_argument("--md5", default=None, help="expected md5 (hex)")
    digest.add_argument("--sha256", default=None, help="expected sha256 (hex), instead of --md5")
    p.add_argument("--size", type=int, default=None, help="expected size in bytes")
    p.add_argument("--extract_to", default=None, help="extract the archive into this directory")
    p.add_argument("--marker", default=None, help="marker file written after extraction")
    p.add_argument("--remove_archive", action="store_true", help="delete the archive after extraction")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--max_bytes", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop early
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [download] %(message)s")
    try:
        path = download(a.url, a.dest, md5=a.md5, size=a.size, timeout=a.timeout, retries=a.retries,
                        max_bytes=a.max_bytes, sha256=a.sha256)
        if a.extract_to:
            extract(path, a.extract_to, a.marker)
            if a.remove_archive:
                path.unlink()
    except DownloadError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
