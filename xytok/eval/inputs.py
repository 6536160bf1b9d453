"""Reading the audio lists that scoring compares: Kaldi wav.scp files or directories of wavs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xytok.audio import AudioError, AudioInfo, load_audio
from xytok.data.table import read_table

SAMPLE_RATE = 16000

# Scoring's read errors are the one audio error type (kept under this name for its callers).
AudioReadError = AudioError


def read_scp(path: str | os.PathLike) -> dict[str, str]:
    """`uttid path` or `uttid command |` per line -> {uttid: rest} (the one table parser; a line
    without a value or a duplicate id is a ValueError naming file and line)."""
    return read_table(path, require_value=True, key_name="utterance id", expect="'uttid path'")


def read_text(path: str | os.PathLike) -> dict[str, str]:
    """Kaldi `text`: `uttid words...` (an utterance with no words maps to ''; a duplicate id is a
    ValueError naming file and line)."""
    return read_table(path, key_name="utterance id")


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


def load_wav_info(entry: str, target_sr: int = SAMPLE_RATE, utt: str | None = None) -> tuple[np.ndarray, AudioInfo]:
    """Load one wav.scp entry as mono float64 at `target_sr`; returns (wav, AudioInfo).

    xytok.audio.load_audio (the one loader: files, pipes, ark offsets, tar members; polyphase
    resampling with the exact rate ratio). Multi-channel input is downmixed to the mean of its
    channels, as everywhere else in the toolkit; `info.downmixed` says so, and scoring counts it in
    summary.json. Raises AudioReadError (= AudioError) naming the entry.
    """
    wav, info = load_audio(entry, target_sr=target_sr, utt=utt)
    return wav.astype(np.float64), info


def load_wav(entry: str, target_sr: int = SAMPLE_RATE, utt: str | None = None) -> tuple[np.ndarray, int]:
    """`load_wav_info` returning (wav, original sample rate)."""
    wav, info = load_wav_info(entry, target_sr=target_sr, utt=utt)
    return wav, info.orig_sample_rate
