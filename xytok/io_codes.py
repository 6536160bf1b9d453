"""Reading and writing codec codes, keyed by utterance id.

Two on-disk formats:

* **Kaldi ark + scp** (``codes.scp`` / ``codes.ark``), written with kaldiio. Kaldi's archive
  format has no int32 *matrix* type (kaldiio writes int32 only as vectors), so each utterance is a
  float32 matrix (nq, T) holding the integer indices: exact for indices < 2**24, readable by
  ``copy-feats``/``kaldiio.load_scp``. ``read_codes`` turns them back into int64 after checking
  that every value is an integer.
* **npy directory**: ``<dir>/<utt>.npy``, int64 array (nq, T) per utterance.

Writes are crash-safe: the ark and scp are written under temporary names and renamed into place
only by ``close()``, so a killed run never leaves a ``codes.scp`` that looks complete; each
``.npy`` is written to a temp name and renamed.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterator, Tuple

import numpy as np

KALDI_SUFFIXES = (".scp", ".ark")


class CodesError(ValueError):
    """Malformed codes file/entry. The message names the file and/or utterance."""


def is_kaldi_path(path: str) -> bool:
    return str(path).endswith(KALDI_SUFFIXES)


def ark_scp_paths(path: str) -> Tuple[str, str]:
    """``x.scp`` or ``x.ark`` -> (``x.ark``, ``x.scp``)."""
    stem = os.path.splitext(str(path))[0]
    return stem + ".ark", stem + ".scp"


def _check_utt_id(utt: str) -> None:
    if not utt or any(c.isspace() for c in utt):
        raise CodesError(f"invalid utterance id {utt!r}: must be non-empty without whitespace")


def _as_code_matrix(codes, utt: str) -> np.ndarray:
    if hasattr(codes, "detach"):  # torch tensor
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise CodesError(f"utterance {utt!r}: codes must be a (nq, T) matrix, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise CodesError(f"utterance {utt!r}: codes must be integers, got dtype {codes.dtype}")
    return codes


class CodesWriter:
    """Write (nq, T) integer codes per utterance to ``.scp``/``.ark`` (Kaldi) or a directory (npy).

    Use as a context manager. ``close()`` publishes the result; ``abort()`` (called automatically
    when the ``with`` block raises) removes the temporary files and leaves no scp behind.
    """

    def __init__(self, out: str):
        self.out = str(out)
        self.kaldi = is_kaldi_path(self.out)
        self.count = 0
        self._closed = False
        if self.kaldi:
            import kaldiio

            self.ark, self.scp = ark_scp_paths(self.out)
            for p in (self.ark, self.scp):
                d = os.path.dirname(os.path.abspath(p))
                os.makedirs(d, exist_ok=True)
            suffix = f".tmp{os.getpid()}"
            self._ark_tmp = self.ark + suffix
            self._scp_tmp = self.scp + suffix
            self._writer = kaldiio.WriteHelper(f"ark,scp:{self._ark_tmp},{self._scp_tmp}")
        else:
            if os.path.exists(self.out) and not os.path.isdir(self.out):
                raise CodesError(f"{self.out}: output exists and is not a directory "
                                 f"(use a .scp/.ark path for Kaldi format)")
            os.makedirs(self.out, exist_ok=True)
            self._seen = set()

    def __setitem__(self, utt: str, codes) -> None:
        self.write(utt, codes)

    def write(self, utt: str, codes) -> None:
        if self._closed:
            raise CodesError(f"{self.out}: writer already closed")
        _check_utt_id(utt)
        codes = _as_code_matrix(codes, utt)
        if self.kaldi:
            if codes.size and (codes.min() < 0 or codes.max() >= 2 ** 24):
                raise CodesError(f"utterance {utt!r}: code values outside [0, 2**24) cannot be "
                                 f"stored exactly in a Kaldi float matrix")
            self._writer[utt] = codes.astype(np.float32)
        else:
            if "/" in utt or utt in (".", ".."):
                raise CodesError(f"utterance id {utt!r} cannot be used as a file name")
            if utt in self._seen:
                raise CodesError(f"{self.out}: utterance {utt!r} written twice")
            self._seen.add(utt)
            final = os.path.join(self.out, utt + ".npy")
            tmp = os.path.join(self.out, f".{utt}.tmp{os.getpid()}.npy")
            np.save(tmp, codes.astype(np.int64))
            os.replace(tmp, final)
        self.count += 1

    def close(self) -> None:
        """Publish: rename the temporary ark into place and write the scp pointing at it."""
        if self._closed:
            return
        self._closed = True
        if not self.kaldi:
            return
        self._writer.close()
        os.replace(self._ark_tmp, self.ark)
        lines = []
        with open(self._scp_tmp, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                utt, loc = line.rstrip("\n").split(maxsplit=1)
                ark_path, offset = loc.rsplit(":", 1)
                if ark_path != self._ark_tmp:
                    raise CodesError(f"{self._scp_tmp}: unexpected ark path {ark_path!r}")
                lines.append(f"{utt} {self.ark}:{offset}\n")
        scp_tmp2 = self.scp + ".tmp"
        with open(scp_tmp2, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(scp_tmp2, self.scp)
        os.remove(self._scp_tmp)

    def abort(self) -> None:
        """Drop everything written so far (Kaldi) — no scp is published."""
        if self._closed:
            return
        self._closed = True
        if self.kaldi:
            try:
                self._writer.close()
            finally:
                for p in (self._ark_tmp, self._scp_tmp):
                    if os.path.exists(p):
                        os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _to_int_codes(mat, source: str, utt: str) -> np.ndarray:
    mat = np.asarray(mat)
    if mat.ndim != 2:
        raise CodesError(f"{source}: utterance {utt!r}: expected a (nq, T) matrix, got shape {mat.shape}")
    if np.issubdtype(mat.dtype, np.integer):
        return mat.astype(np.int64)
    if not np.issubdtype(mat.dtype, np.floating):
        raise CodesError(f"{source}: utterance {utt!r}: unsupported dtype {mat.dtype}")
    if not np.isfinite(mat).all() or (mat != np.round(mat)).any():
        raise CodesError(f"{source}: utterance {utt!r}: codes contain non-integer values")
    return mat.astype(np.int64)


class CodesReader:
    """Lazy reader of codes from a ``.scp`` (or ``.ark``) file or an npy directory.

    ``keys()`` lists utterance ids (scp order / LC_ALL=C sorted file stems); ``reader[utt]``
    loads one utterance as int64 (nq, T) and raises :class:`CodesError` naming it on problems.
    """

    def __init__(self, path: str):
        self.path = str(path)
        if os.path.isdir(self.path):
            self.kaldi = False
            stems = [n[:-4] for n in os.listdir(self.path)
                     if n.endswith(".npy") and not n.startswith(".")]
            self._keys = sorted(stems, key=lambda s: s.encode("utf-8"))
        elif is_kaldi_path(self.path):
            import kaldiio

            self.kaldi = True
            if self.path.endswith(".ark"):
                # a bare ark: read it sequentially (no random access without an scp)
                if not os.path.exists(self.path):
                    raise CodesError(f"{self.path}: file not found")
                self._data = OrderedDict(kaldiio.load_ark(self.path))
                self._keys = list(self._data)
            else:
                if not os.path.exists(self.path):
                    raise CodesError(f"{self.path}: file not found")
                self._keys = []
                self._locs = {}
                with open(self.path, encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        parts = line.split(maxsplit=1)
                        if len(parts) != 2:
                            raise CodesError(f"{self.path}:{lineno}: malformed scp line {line.rstrip()!r}")
                        utt, loc = parts[0], parts[1].strip()
                        if utt in self._locs:
                            raise CodesError(f"{self.path}:{lineno}: duplicate utterance id {utt!r}")
                        self._keys.append(utt)
                        self._locs[utt] = loc
        else:
            raise CodesError(f"{self.path}: not a codes .scp/.ark file or a directory of .npy files")

    def keys(self):
        return list(self._keys)

    def __len__(self):
        return len(self._keys)

    def __contains__(self, utt):
        return utt in set(self._keys)

    def __getitem__(self, utt: str) -> np.ndarray:
        if self.kaldi:
            if hasattr(self, "_data"):
                return _to_int_codes(self._data[utt], self.path, utt)
            import kaldiio

            loc = self._locs[utt]
            try:
                mat = kaldiio.load_mat(loc)
            except Exception as e:
                raise CodesError(f"{self.path}: utterance {utt!r}: cannot read {loc}: {e}") from None
            return _to_int_codes(mat, self.path, utt)
        f = os.path.join(self.path, utt + ".npy")
        try:
            mat = np.load(f, allow_pickle=False)
        except Exception as e:
            raise CodesError(f"{f}: utterance {utt!r}: cannot read: {e}") from None
        return _to_int_codes(mat, f, utt)

    def items(self) -> Iterator[Tuple[str, np.ndarray]]:
        for utt in self._keys:
            yield utt, self[utt]


def read_codes(path: str) -> "OrderedDict[str, np.ndarray]":
    """All codes from a ``.scp``/``.ark`` or an npy directory: utt -> int64 (nq, T)."""
    return OrderedDict(CodesReader(path).items())


def write_codes(out: str, codes_by_utt) -> None:
    """Write a mapping utt -> (nq, T) codes to ``out`` (``.scp``/``.ark`` or a directory)."""
    with CodesWriter(out) as w:
        for utt, codes in codes_by_utt.items():
            w.write(utt, codes)
