"""Resumable download: a local HTTP server with Range support serves a small tar.gz."""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from xytok.data.download import DownloadError, download, extract


def _make_targz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in [("LibriSpeech/dev-clean/1/2/1-2.trans.txt", b"1-2-0000 HELLO\n"),
                           ("LibriSpeech/dev-clean/1/2/1-2-0000.flac", os.urandom(300_000))]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


PAYLOAD = _make_targz()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    requests = []  # (path, Range header) of every request, to check that resume asked for the rest

    def log_message(self, *a):  # keep pytest output clean
        pass

    def do_GET(self):
        _Handler.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/missing.tar.gz":
            self.send_error(404)
            return
        data, rng = PAYLOAD, self.headers.get("Range")
        if rng and self.path != "/norange.tar.gz":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_interrupt_resume_and_extract(server, tmp_path):
    _Handler.requests.clear()
    dest = tmp_path / "dev-clean.tar.gz"
    with pytest.raises(DownloadError, match="resume"):
        download(f"{server}/dev-clean.tar.gz", dest, md5=MD5, max_bytes=100_000)
    part = tmp_path / "dev-clean.tar.gz.part"
    assert part.stat().st_size == 100_000 and not dest.exists()
    download(f"{server}/dev-clean.tar.gz", dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert _Handler.requests[-1][1] == "bytes=100000-"  # resumed, not restarted
    marker = extract(dest, tmp_path / "out")
    assert marker.exists()
    assert (tmp_path / "out/LibriSpeech/dev-clean/1/2/1-2.trans.txt").read_text() == "1-2-0000 HELLO\n"
    # A second call is a no-op: no new request.
    n = len(_Handler.requests)
    download(f"{server}/dev-clean.tar.gz", dest, md5=MD5)
    assert len(_Handler.requests) == n


def test_server_without_range_restarts(server, tmp_path):
    dest = tmp_path / "x.tar.gz"
    (tmp_path / "x.tar.gz.part").write_bytes(b"garbage" * 10)
    download(f"{server}/norange.tar.gz", dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD


def test_bad_md5_is_an_error_and_no_complete(server, tmp_path):
    dest = tmp_path / "test-clean.tar.gz"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "xytok.data.download", "--url", f"{server}/test-clean.tar.gz",
                        "--md5", "0" * 32, "--dest", str(dest), "--extract_to", str(out),
                        "--marker", str(out / ".test-clean.complete"), "--retries", "1"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "md5 mismatch" in r.stderr and "test-clean.tar.gz" in r.stderr
    assert not dest.exists() and not (tmp_path / "test-clean.tar.gz.part").exists()
    assert not (out / ".test-clean.complete").exists()


def test_mirror_fallback_and_missing(server, tmp_path):
    dest = tmp_path / "y.tar.gz"
    download([f"{server}/missing.tar.gz", f"{server}/y.tar.gz"], dest, md5=MD5, retries=1)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="could not download"):
        download(f"{server}/missing.tar.gz", tmp_path / "z.tar.gz", retries=1)


def test_help():
    r = subprocess.run([sys.executable, "-m", "xytok.data.download", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--md5" in r.stdout


def test_sha256_instead_of_md5(server, tmp_path):
    dest = tmp_path / "s.tar.gz"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(f"{server}/s.tar.gz", dest, sha256="0" * 64, retries=1)
    assert not dest.exists() and not (tmp_path / "s.tar.gz.part").exists()
    download(f"{server}/s.tar.gz", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(ValueError, match="not both"):
        download(f"{server}/s.tar.gz", dest, md5=MD5, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    r = subprocess.run([sys.executable, "-m", "xytok.data.download", "--url", f"{server}/s.tar.gz", "--md5", MD5,
                        "--sha256", "0" * 64, "--dest", str(dest)], capture_output=True, text=True)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
