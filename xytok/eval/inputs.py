"""Reading the audio lists that scoring compares: Kaldi wav.scp files or directories of wavs."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


class AudioReadError(Exception):
    pass


def read_scp(path: str | os.PathLike) -> dict[str, str]:
    """`uttid path` or `uttid command |` per line -> {uttid: rest}. Duplicate ids are an error."""
    entries = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'uttid path', got {line!r}")
            if parts[0] in entries:
                raise ValueError(f"{path}:{lineno}: duplicate utterance id {parts[0]!r}")
            entries[parts[0]] = parts[1]
    return entries


def read_text(path: str | os.PathLike) -> dict[str, str]:
    """Kaldi `text`: `uttid words...` (an utterance with no words maps to '')."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(maxsplit=1)
            if parts:
                out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def resolve_audio_list(path: str | os.PathLike) -> dict[str, str]:
    """A wav.scp file, a directory holding a wav.scp, or a directory of audio files (id = stem)."""
    p = Path(path)
    if p.is_file():
        return read_scp(p)
    if p.is_dir():
        if (p / "wav.scp").is_file():
            return read_scp(p / "wav.scp")
        files = sorted(q for q in p.rglob("*") if q.suffix.lower() in (".wav", ".flac") and q.is_file())
        if not files:
            raise FileNotFoundError(f"{p}: directory has no wav.scp and no .wav/.flac files")
        out = {}
        for q in files:
            if q.stem in out:
                raise ValueError(f"{p}: utterance id {q.stem!r} appears twice ({out[q.stem]} and {q})")
            out[q.stem] = str(q)
        return out
    raise FileNotFoundError(f"{p}: neither a wav.scp file nor a directory")


def load_wav(entry: str, target_sr: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Load one wav.scp entry as mono float64 at `target_sr`; returns (wav, original rate).

    Resampling (only if the file is not at target_sr) uses scipy.signal.resample_poly with the
    rational rate ratio - never a sample-count based resample.
    """
    entry = entry.strip()
    try:
        if entry.endswith("|"):
            proc = subprocess.run(entry[:-1], shell=True, capture_output=True, check=True)
            wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float64", always_2d=True)
        else:
            wav, sr = sf.read(entry, dtype="float64", always_2d=True)
    except subprocess.CalledProcessError as e:
        raise AudioReadError(f"command {entry!r} failed: {e.stderr.decode(errors='replace')[-200:]}") from e
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / FileNotFoundError
        raise AudioReadError(f"cannot read {entry!r}: {e}") from e
    if wav.shape[1] != 1:
        raise AudioReadError(f"{entry!r} has {wav.shape[1]} channels; scoring needs mono")
    wav = wav[:, 0]
    if sr != target_sr:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, target_sr)
        wav = resample_poly(wav, target_sr // g, sr // g)
    return wav, sr
