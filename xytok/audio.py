"""Audio input/output shared by the CLI, the recipe's audio dump (stage 2) and scoring.

* ``load_audio`` reads a file, a Kaldi ``wav.scp`` value (a path, a ``cmd |`` pipe, an
  ``foo.ark:123`` offset or a tar member ``shard.tar:OFFSET:SIZE``) and returns mono float32 at
  the target rate;
* ``read_wav_scp`` parses a Kaldi ``wav.scp`` (``uttid path`` / ``uttid cmd |``);
* ``list_audio_dir`` maps a directory of audio files to utterance ids (file stems);
* ``write_wav`` writes a file atomically (temp name + rename), reporting clipping.

Every problem raises :class:`AudioError` (a ``ValueError``) whose message names the file.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import subprocess
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import soundfile as sf

from xytok.data.table import TableError, read_table

logger = logging.getLogger(__name__)

# Extensions treated as audio when a directory is given (libsndfile formats).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".sph", ".w64", ".caf")

_ARK_OFFSET = re.compile(r"^(?P<ark>.+\.ark):(?P<offset>\d+)$")
# A member of an uncompressed tar archive: the byte offset of its data and its size in bytes (what
# tarfile's TarInfo.offset_data / .size give). The member's bytes (WAV, FLAC, MP3, ...) are decoded
# as they are, so large corpora stay in a few big files and are never re-encoded.
_TAR_MEMBER = re.compile(r"^(?P<tar>.+\.tar):(?P<offset>\d+):(?P<size>\d+)$")


def tar_member_entry(tar_path: str, offset: int, size: int) -> str:
    """The wav.scp / manifest value for the tar member whose data is at [offset, offset + size)."""
    return f"{tar_path}:{int(offset)}:{int(size)}"


def parse_tar_member(entry: str) -> Optional[Tuple[str, int, int]]:
    """(tar path, data offset, size) for a ``shard.tar:OFFSET:SIZE`` value, else None."""
    m = _TAR_MEMBER.match(entry.strip())
    if not m:
        return None
    return m.group("tar"), int(m.group("offset")), int(m.group("size"))


def read_tar_member_bytes(tar_path: str, offset: int, size: int, what: str = "") -> bytes:
    what = what or f"{tar_path}:{offset}:{size}"
    try:
        with open(tar_path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as e:
        raise AudioError(f"{what}: cannot read tar member: {e}") from None
    if len(data) != size:
        raise AudioError(f"{what}: tar {tar_path!r} ends after {len(data)} of {size} bytes at offset "
                         f"{offset} (truncated shard?)")
    return data


def decode_audio_bytes(data: bytes, what: str) -> Tuple[np.ndarray, int]:
    """Decode an in-memory audio file (any format libsndfile reads, MP3 included)."""
    if not data:
        raise AudioError(f"{what}: audio is empty (0 bytes)")
    try:
        out, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{what}: cannot decode audio: {e}") from None
    return out, sr


class AudioError(ValueError):
    """Unreadable, empty or invalid audio. The message names the file or utterance."""


@dataclass
class AudioInfo:
    source: str  # path or pipe command, as given
    orig_sample_rate: int
    orig_channels: int
    orig_num_samples: int  # per channel, before resampling
    sample_rate: int  # after resampling
    num_samples: int  # after resampling and downmix
    resampled: bool
    downmixed: bool

    @property
    def duration(self) -> float:
        return self.num_samples / float(self.sample_rate)


def _read_pipe(command: str, what: str) -> Tuple[np.ndarray, int]:
    """Run a Kaldi-style ``cmd |`` entry and decode the audio it writes to stdout."""
    proc = subprocess.run(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise AudioError(f"{what}: pipe command failed with exit status {proc.returncode}: "
                         f"{command!r}: {' | '.join(err)}")
    if not proc.stdout:
        raise AudioError(f"{what}: pipe command wrote no audio to stdout: {command!r}")
    try:
        data, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for bad streams
        raise AudioError(f"{what}: cannot decode the audio written by pipe command {command!r}: {e}") from None
    return data, sr


def _read_ark(ark: str, offset: int, what: str) -> Tuple[np.ndarray, int]:
    """Read a wav stored inside a Kaldi ark (``foo.ark:123``, as written by kaldiio/wav-copy)."""
    import kaldiio

    try:
        loaded = kaldiio.load_mat(f"{ark}:{offset}")
    except Exception as e:
        raise AudioError(f"{what}: cannot read audio from ark {ark!r} at offset {offset}: {e}") from None
    if not (isinstance(loaded, tuple) and len(loaded) == 2):
        raise AudioError(f"{what}: ark entry {ark}:{offset} holds a matrix, not audio")
    sr, data = loaded
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / 32768.0  # Kaldi stores int16 PCM
    data = data.astype(np.float32)
    if data.ndim == 1:
        data = data[:, None]
    return data, int(sr)


def _read_any(entry: str, what: str) -> Tuple[np.ndarray, int]:
    stripped = entry.strip()
    if stripped.endswith("|"):
        return _read_pipe(stripped[:-1].strip(), what)
    if not os.path.exists(stripped):
        member = parse_tar_member(stripped)
        if member and os.path.exists(member[0]):
            return decode_audio_bytes(read_tar_member_bytes(*member, what=what), what)
        m = _ARK_OFFSET.match(stripped)
        if m and os.path.exists(m.group("ark")):
            return _read_ark(m.group("ark"), int(m.group("offset")), what)
        raise AudioError(f"{what}: file not found: {stripped}")
    if os.path.isdir(stripped):
        raise AudioError(f"{what}: is a directory, not an audio file: {stripped}")
    try:
        data, sr = sf.read(stripped, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{what}: cannot read audio: {e}") from None
    return data, sr


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling with the exact rational ratio target_sr/orig_sr (float32 out)."""
    if orig_sr == target_sr:
        return wav
    from scipy.signal import resample_poly

    g = math.gcd(int(orig_sr), int(target_sr))
    up, down = int(target_sr) // g, int(orig_sr) // g
    out = resample_poly(wav.astype(np.float64), up, down, axis=0)
    return out.astype(np.float32)


def band_energy_db(wav: np.ndarray, sample_rate: int, low_hz: float) -> float:
    """Energy of ``wav`` at and above ``low_hz``, in dB relative to its total energy (-inf for
    silence or nothing above). 16 kHz audio upsampled to 24 kHz by ``resample`` keeps <= -50 dB
    above 9 kHz (the polyphase filter's transition and stop band); wide-band speech has more."""
    spec = np.abs(np.fft.rfft(np.asarray(wav, dtype=np.float64))) ** 2
    total = spec.sum()
    freqs = np.fft.rfftfreq(len(wav), 1.0 / sample_rate)
    high = spec[freqs >= low_hz].sum()
    if total <= 0 or high <= 0:
        return float("-inf")
    return float(10.0 * np.log10(high / total))


def load_audio(path_or_scp_entry: str, target_sr: Optional[int] = 16000, utt: Optional[str] = None
               ) -> Tuple[np.ndarray, AudioInfo]:
    """Load mono float32 audio at ``target_sr`` (None = keep the file's rate).

    ``path_or_scp_entry`` is a file path, a Kaldi pipe (``sox a.flac -t wav - |``), an ark
    offset (``feats.ark:42``) or a tar member (``shard.tar:OFFSET:SIZE``), i.e. anything that may
    follow the utterance id in ``wav.scp``.
    Multi-channel audio is averaged to mono and other rates are resampled; both are logged.
    ``utt`` (optional) is only used to name the utterance in messages.
    """
    entry = str(path_or_scp_entry)
    what = f"utterance {utt!r} ({entry.strip()})" if utt else entry.strip()
    data, sr = _read_any(entry, what)
    n_frames, n_channels = data.shape
    if n_frames == 0 or n_channels == 0:
        raise AudioError(f"{what}: audio is empty (0 samples)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"{what}: audio contains {bad} NaN/Inf sample(s)")

    downmixed = n_channels > 1
    if downmixed:
        logger.info("%s: downmixing %d channels to mono (mean)", what, n_channels)
        wav = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    else:
        wav = data[:, 0]

    out_sr = sr if target_sr is None else int(target_sr)
    resampled = out_sr != sr
    if resampled:
        logger.info("%s: resampling %d Hz -> %d Hz", what, sr, out_sr)
        wav = resample(wav, sr, out_sr)
        if wav.size == 0:
            raise AudioError(f"{what}: audio is empty after resampling {sr} -> {out_sr} Hz")

    info = AudioInfo(source=entry.strip(), orig_sample_rate=int(sr), orig_channels=int(n_channels),
                     orig_num_samples=int(n_frames), sample_rate=out_sr, num_samples=int(wav.shape[0]),
                     resampled=resampled, downmixed=downmixed)
    return np.ascontiguousarray(wav, dtype=np.float32), info


def read_wav_scp(path: str) -> "OrderedDict[str, str]":
    """Parse a Kaldi ``wav.scp``: ``uttid path`` or ``uttid cmd |`` per line (order kept).

    The one table parser (xytok.data.table, lenient: blank lines and any order allowed); a line
    without a value, a repeated id or a file that is not UTF-8 text is an AudioError naming the
    file and line number.
    """
    try:
        return OrderedDict(read_table(path, require_value=True, key_name="utterance id",
                                      expect="'uttid path' or 'uttid command |'"))
    except TableError as e:
        raise AudioError(str(e)) from None


def is_audio_file(path: str) -> bool:
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def list_audio_dir(directory: str) -> "OrderedDict[str, str]":
    """Audio files directly inside ``directory`` as utt id (file stem) -> path, sorted by id."""
    found = {}
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if name.startswith(".") or not is_audio_file(full):  # hidden/temp files (e.g. write_wav's)
            continue
        stem = os.path.splitext(name)[0]
        if stem in found:
            raise AudioError(f"{directory}: two audio files give the same utterance id {stem!r}: "
                             f"{os.path.basename(found[stem])} and {name}")
        found[stem] = full
    # LC_ALL=C order (byte order), as Kaldi tools expect.
    return OrderedDict((k, found[k]) for k in sorted(found, key=lambda s: s.encode("utf-8")))


def write_wav(path: str, wav: Union[np.ndarray, "object"], sr: int = 16000, subtype: str = "PCM_16") -> int:
    """Write mono audio atomically (temp file + rename). Returns the number of clipped samples.

    For integer PCM subtypes, samples outside [-1, 1] are clipped and the count is logged.
    """
    if hasattr(wav, "detach"):  # torch tensor
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: refusing to write audio with NaN/Inf samples")
    clipped = 0
    if subtype.startswith("PCM") or subtype in ("ULAW", "ALAW"):
        over = np.abs(wav) > 1.0
        clipped = int(over.sum())
        if clipped:
            logger.warning("%s: clipping %d of %d samples (peak %.3f) to [-1, 1]",
                           path, clipped, wav.size, float(np.abs(wav).max()))
            wav = np.clip(wav, -1.0, 1.0)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fmt = (ext[1:] or "wav").upper()
    tmp = os.path.join(directory, f".{base}.tmp{os.getpid()}{ext}")
    try:
        sf.write(tmp, wav, sr, subtype=subtype, format=fmt)
        os.replace(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return clipped
