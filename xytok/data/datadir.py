"""Kaldi data directories: read, validate, fix, split, subset, filter by duration, combine.

A data dir holds tables `<id> <value>` sorted in byte order (what `LC_ALL=C sort` gives):
  per utterance: text, utt2spk, segments, feats.scp, utt2*, other *.scp, and wav.scp when there
                 is no segments file; per recording (with segments): wav.scp, reco2*;
  per speaker:   spk2utt (always derived from utt2spk), spk2*; other files (feats_type, ...) are
                 copied as they are.
Tables are read and written by xytok.data.table (the one parser). This module is stdlib only, so
the utils/ wrappers work with any python3; soundfile (and kaldiio for ark entries) are imported
only when audio has to be read. Its command line (the utils/ data-dir tools) is xytok.bin.datadir.
"""
from __future__ import annotations

import io
import math
import os
import re
import contextlib
import shutil
import sys
import tempfile
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from xytok.data.table import TableError, byte_key, sorted_ids, write_table  # noqa: F401 (re-exported)
from xytok.data.table import read_table as _read_table

MAX_LISTED = 5  # how many offending ids a message names


class DataDirError(Exception):
    """A data dir (or table) that cannot be used; the message names the file and the problem."""


def _examples(ids: Sequence[str]) -> str:
    ids = list(ids)
    more = f", ... ({len(ids)} in all)" if len(ids) > MAX_LISTED else ""
    return ", ".join(ids[:MAX_LISTED]) + more


# ----------------------------------------------------------------------------------------------
# Tables


def read_table(path: str, problems: Optional[List[str]] = None) -> Dict[str, str]:
    """Read a data-dir table (strict: sorted, no blank lines, ...; xytok.data.table) into an
    insertion-ordered dict.

    With `problems` (a list), format problems are appended to it and the table is still returned
    (first occurrence of a duplicate kept, bad lines skipped); without it they raise DataDirError
    listing all of them.
    """
    found: List[str] = []
    try:
        table = _read_table(path, found, strict=True)
    except TableError as e:  # unreadable file
        raise DataDirError(str(e)) from None
    if problems is None and found:
        raise DataDirError("; ".join(found))
    if problems is not None:
        problems.extend(found)
    return table


def utt2spk_to_spk2utt(utt2spk: Dict[str, str]) -> Dict[str, str]:
    """Speakers in order of first appearance, their utterances in input order (as Kaldi)."""
    spk2utts: Dict[str, List[str]] = {}
    for utt, spk in utt2spk.items():
        spk2utts.setdefault(spk, []).append(utt)
    return {spk: " ".join(utts) for spk, utts in spk2utts.items()}


def spk2utt_to_utt2spk(spk2utt: Dict[str, str]) -> Dict[str, str]:
    return {utt: spk for spk, utts in spk2utt.items() for utt in utts.split()}


# ----------------------------------------------------------------------------------------------
# Splitting


def split_even(keys: Sequence[str], n: int) -> List[List[str]]:
    """Contiguous split into n parts whose sizes differ by at most one (first parts larger)."""
    if n < 1:
        raise DataDirError(f"cannot split into {n} parts")
    if len(keys) < n:
        raise DataDirError(f"cannot split {len(keys)} lines into {n} non-empty parts")
    size, extra = divmod(len(keys), n)
    parts, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        parts.append(list(keys[start:end]))
        start = end
    return parts


def split_by_group(keys: Sequence[str], group_of: Dict[str, str], n: int) -> List[List[str]]:
    """Contiguous split that keeps each group (speaker) in one part, balancing the line counts.

    Groups must be contiguous in `keys` (true for sorted Kaldi dirs whose utterance ids start with
    the speaker id)."""
    groups: List[List[str]] = []
    seen = set()
    for key in keys:
        if key not in group_of:
            raise DataDirError(f"'{key}' has no speaker in utt2spk")
        g = group_of[key]
        if groups and group_of[groups[-1][0]] == g:
            groups[-1].append(key)
            continue
        if g in seen:
            raise DataDirError(f"speaker '{g}' is not contiguous (at '{key}'): sort the data by "
                               f"speaker / prefix utterance ids with the speaker id")
        seen.add(g)
        groups.append([key])
    if len(groups) < n:
        raise DataDirError(f"cannot split {len(groups)} speakers into {n} parts "
                           f"(keeping speakers together); use fewer jobs or split by utterance")
    total = len(keys)
    cum = [0]
    for grp in groups:
        cum.append(cum[-1] + len(grp))
    cuts = [0]
    for i in range(1, n):
        target = total * i / n
        lo, hi = cuts[-1] + 1, len(groups) - (n - i)  # every part keeps at least one group
        best = min(range(lo, hi + 1), key=lambda c: (abs(cum[c] - target), c))
        cuts.append(best)
    cuts.append(len(groups))
    return [[k for grp in groups[a:b] for k in grp] for a, b in zip(cuts[:-1], cuts[1:])]


# ----------------------------------------------------------------------------------------------
# Data dirs


class DataDir:
    """A data dir in memory: keyed tables plus other files copied verbatim."""

    def __init__(self, tables: Dict[str, Dict[str, str]], plain: Dict[str, bytes], path: str = ""):
        self.tables = tables
        self.plain = plain
        self.path = path

    @classmethod
    def load(cls, path: str, problems: Optional[List[str]] = None) -> "DataDir":
        if not os.path.isdir(path):
            raise DataDirError(f"{path}: no such data directory")
        tables, plain = {}, {}
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if not os.path.isfile(full) or name.startswith(".") or name.endswith((".tmp", "~")):
                continue
            if name == "spk2utt" or cls._is_keyed(name):
                tables[name] = read_table(full, problems)
            else:
                with open(full, "rb") as f:
                    plain[name] = f.read()
        return cls(tables, plain, path)

    @staticmethod
    def _is_keyed(name: str) -> bool:
        return (name in ("text", "segments", "wav.scp", "feats.scp")
                or name.startswith(("utt2", "spk2", "reco2")) or name.endswith(".scp"))

    @property
    def has_segments(self) -> bool:
        return "segments" in self.tables

    def level(self, name: str) -> str:
        if name == "spk2utt":
            return "derived"
        if name == "wav.scp":
            return "reco" if self.has_segments else "utt"
        if name.startswith("reco2"):
            return "reco"
        if name.startswith("spk2"):
            return "spk"
        return "utt"

    def names(self, level: str) -> List[str]:
        return [n for n in self.tables if self.level(n) == level]

    @property
    def utt2spk(self) -> Dict[str, str]:
        if "utt2spk" not in self.tables:
            raise DataDirError(f"{self.path}/utt2spk: missing (every data dir needs utt2spk)")
        return self.tables["utt2spk"]

    def utt_ids(self) -> List[str]:
        return sorted_ids(self.utt2spk)

    def subset(self, keep: Iterable[str]) -> "DataDir":
        """Only the utterances in `keep`, with their recordings and speakers; spk2utt rebuilt."""
        keep = set(keep)
        tables = {}
        for name in self.names("utt"):
            tables[name] = {k: v for k, v in self.tables[name].items() if k in keep}
        spks = {tables["utt2spk"][u] for u in tables.get("utt2spk", {})}
        for name in self.names("spk"):
            tables[name] = {k: v for k, v in self.tables[name].items() if k in spks}
        if self.has_segments:
            recos = {v.split()[0] for v in tables["segments"].values() if v.split()}
            for name in self.names("reco"):
                tables[name] = {k: v for k, v in self.tables[name].items() if k in recos}
        out = DataDir(tables, dict(self.plain), self.path)
        out.rebuild_spk2utt()
        return out

    def rebuild_spk2utt(self) -> None:
        if "utt2spk" in self.tables:
            ordered = {u: self.tables["utt2spk"][u] for u in sorted_ids(self.tables["utt2spk"])}
            self.tables["spk2utt"] = utt2spk_to_spk2utt(ordered)

    def renamed(self, utt_fn: Callable[[str], str], spk_fn: Callable[[str], str]) -> "DataDir":
        tables = {}
        for name, table in self.tables.items():
            level = self.level(name)
            if level == "utt":
                t = {utt_fn(k): v for k, v in table.items()}
                if name == "utt2spk":
                    t = {k: spk_fn(v) for k, v in t.items()}
            elif level == "spk":
                t = {spk_fn(k): v for k, v in table.items()}
            elif level == "reco":
                t = dict(table)
            else:
                continue
            tables[name] = t
        out = DataDir(tables, dict(self.plain), self.path)
        out.rebuild_spk2utt()
        return out

    def write(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        for name, table in self.tables.items():
            write_table(os.path.join(path, name), table)
        for name, data in self.plain.items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)


@contextlib.contextmanager
def atomic_directory(out):
    """Yield a fresh temporary directory beside `out`; when the block succeeds it replaces `out`
    (permissions from the umask), otherwise it is removed: a killed or failed writer never leaves
    a half-written directory under the final name."""
    out = os.path.abspath(os.fspath(out))
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp", dir=parent)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a data dir or cache is shared
        old = None
        if os.path.exists(out):
            old = os.path.join(parent, f".{name}.old{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Audio helpers (soundfile and xytok.audio imported only here)


def audio_info(value: str) -> Tuple[int, int]:
    """(num_samples, sample_rate) of a wav.scp value: a file, `cmd |`, an `x.ark:offset` or a tar
    member `shard.tar:OFFSET:SIZE`."""
    try:
        return _audio_info(value)
    except ImportError as e:
        raise DataDirError(f"reading audio needs {e.name} (run inside the venv: . ./path.sh)")


def _audio_info(value: str) -> Tuple[int, int]:
    import soundfile

    from xytok.audio import load_audio, parse_tar_member, read_tar_member_bytes

    member = parse_tar_member(value)
    if member and not os.path.isfile(value):
        info = soundfile.info(io.BytesIO(read_tar_member_bytes(*member)))
        return info.frames, info.samplerate
    if value.endswith("|") or re.search(r"\.ark:\d+$", value):
        # No header to read without running the command / the ark reader: decode with the one
        # audio loader (xytok.audio), at the stored rate.
        _, info = load_audio(value, target_sr=None)
        return info.orig_num_samples, info.orig_sample_rate
    info = soundfile.info(value)  # a file: its header is enough
    return info.frames, info.samplerate


# Frames read at each end of a file by audio_problem: enough to reach the data past the header.
_PROBE_FRAMES = 4096


def audio_problem(value: str) -> Optional[str]:
    """Why a wav.scp entry cannot be dumped (None = usable). Files and tar members (`shard.tar:OFFSET:SIZE`):
    the header and a block of frames at each end are read (fast; catches unreadable, empty, undecodable
    and truncated files); pipes and ark entries are decoded whole by xytok.audio, the loader stage 2 uses."""
    try:
        import soundfile
    except ImportError as e:
        raise DataDirError(f"reading audio needs {e.name} (run inside the venv: . ./path.sh)")
    value = value.strip()
    source = value
    if not os.path.exists(value) and _TAR_MEMBER.match(value):  # a member of a shard: its bytes
        from xytok.audio import AudioError, parse_tar_member, read_tar_member_bytes

        member = parse_tar_member(value)
        if member and os.path.isfile(member[0]):
            try:
                source = io.BytesIO(read_tar_member_bytes(*member))
            except AudioError as e:
                return str(e)
    if isinstance(source, str) and (value.endswith("|") or not os.path.exists(value)):
        from xytok.audio import AudioError, load_audio

        try:
            load_audio(value, target_sr=None)
        except AudioError as e:
            return str(e).split(": ", 1)[-1]  # load_audio names the entry; the caller names the utterance
        except Exception as e:  # any reader error belongs to this entry
            return f"cannot be read: {type(e).__name__}: {str(e).strip()[:200]}"
        return None
    if isinstance(source, str) and os.path.isdir(value):
        return f"is a directory, not an audio file: {value}"
    if isinstance(source, str) and os.path.getsize(value) == 0:
        return f"empty file (0 bytes): {value}"
    try:
        with soundfile.SoundFile(source) as f:
            frames, channels, rate = f.frames, f.channels, f.samplerate
            if channels < 1 or rate <= 0:
                return f"bad header ({channels} channels, {rate} Hz): {value}"
            if frames <= 0:
                return f"no audio samples (a {f.format} header only): {value}"
            head = f.read(min(frames, _PROBE_FRAMES), dtype="float32")
            tail_start = max(0, frames - _PROBE_FRAMES)
            f.seek(tail_start)
            tail = f.read(frames - tail_start, dtype="float32")
    except Exception as e:  # libsndfile's errors: unknown format, corrupt data, unsupported codec
        return f"not readable by libsndfile: {str(e).strip()[:200]}"
    if len(head) == 0 or len(tail) < frames - tail_start:
        return f"truncated: the header says {frames} samples, fewer can be read: {value}"
    import numpy

    if not (numpy.isfinite(head).all() and numpy.isfinite(tail).all()):
        return f"NaN/Inf samples (a float file with invalid values): {value}"
    return None


# `shard.tar:OFFSET:SIZE`: a member of an uncompressed tar (xytok.audio decodes these in place).
_TAR_MEMBER = re.compile(r"^(.+\.tar):(\d+):(\d+)$")


def _file_of(value: str) -> Optional[str]:
    """The file a wav.scp/feats.scp value refers to, or None for a pipe."""
    if value.endswith("|"):
        return None
    m = re.match(r"^(.*\.ark):\d+(\[.*\])?$", value) or _TAR_MEMBER.match(value)
    return m.group(1) if m else value


# ----------------------------------------------------------------------------------------------
# Validation


def validate(path: str, no_feats: bool = False, no_text: bool = False, check_audio: bool = False,
             fs: Optional[int] = None) -> List[str]:
    """All problems found in the data dir, each naming the file and the ids (empty = valid)."""
    problems: List[str] = []
    try:
        d = DataDir.load(path, problems)
    except DataDirError as e:
        return [str(e)]
    P = lambda name: os.path.join(path, name)  # noqa: E731
    if "utt2spk" not in d.tables:
        return problems + [f"{P('utt2spk')}: missing (every data dir needs utt2spk)"]
    utt2spk = d.tables["utt2spk"]
    utts = set(utt2spk)
    if not utts:
        problems.append(f"{P('utt2spk')}: empty")

    # speakers: spk2utt consistent, and utterance order agrees with speaker order
    derived = utt2spk_to_spk2utt({u: utt2spk[u] for u in sorted_ids(utt2spk)})
    if "spk2utt" not in d.tables:
        problems.append(f"{P('spk2utt')}: missing (make it with utils/utt2spk_to_spk2utt.pl "
                        f"or utils/fix_data_dir.sh)")
    else:
        given = {s: " ".join(sorted_ids(u.split())) for s, u in d.tables["spk2utt"].items()}
        want = {s: " ".join(sorted_ids(u.split())) for s, u in derived.items()}
        bad = sorted_ids(s for s in set(given) | set(want) if given.get(s) != want.get(s))
        if bad:
            problems.append(f"{P('spk2utt')}: does not match utt2spk for speaker(s) "
                            f"{_examples(bad)} (run utils/fix_data_dir.sh)")
    prev_utt = None
    for u in sorted_ids(utt2spk):
        s = utt2spk[u]
        if prev_utt is not None and byte_key(s) < byte_key(utt2spk[prev_utt]):
            problems.append(f"{P('utt2spk')}: utterance '{u}' (speaker '{s}') sorts after "
                            f"'{prev_utt}' (speaker '{utt2spk[prev_utt]}'): speaker and utterance "
                            f"orders differ (prefix utterance ids with the speaker id)")
            break
        prev_utt = u

    # required files
    if "wav.scp" not in d.tables and "feats.scp" not in d.tables:
        problems.append(f"{path}: neither wav.scp nor feats.scp")
    if not no_text and "text" not in d.tables:
        problems.append(f"{P('text')}: missing (use --no-text for a dir without transcripts)")
    if not no_feats and "feats.scp" not in d.tables:
        problems.append(f"{P('feats.scp')}: missing (use --no-feats before feature extraction)")

    # every per-utterance table covers exactly the utterances of utt2spk
    for name in d.names("utt"):
        if name == "utt2spk":
            continue
        ids = set(d.tables[name])
        missing, extra = sorted_ids(utts - ids), sorted_ids(ids - utts)
        if missing:
            problems.append(f"{P(name)}: {len(missing)} utterance(s) of utt2spk have no entry: "
                            f"{_examples(missing)}")
        if extra:
            problems.append(f"{P(name)}: {len(extra)} utterance(s) not in utt2spk: {_examples(extra)}")

    for name, table in d.tables.items():
        no_value = sorted_ids(k for k, val in table.items() if not val.strip())
        if name != "text" and no_value:
            problems.append(f"{P(name)}: line(s) with an id but no value: {_examples(no_value)}")

    if "text" in d.tables:
        empty = sorted_ids(u for u, t in d.tables["text"].items() if not t.strip())
        if empty:
            problems.append(f"{P('text')}: empty transcript for utterance(s) {_examples(empty)}")

    for name, kind in (("utt2num_samples", int), ("utt2dur", float), ("utt2num_frames", int)):
        if name in d.tables:
            bad = []
            for u, v in d.tables[name].items():
                try:
                    ok = kind(v) > 0
                except ValueError:
                    ok = False
                if not ok:
                    bad.append(u)
            if bad:
                problems.append(f"{P(name)}: value is not a positive number for {_examples(bad)}")

    if d.has_segments:
        wav = d.tables.get("wav.scp", {})
        bad_fmt, no_reco = [], []
        for u, v in d.tables["segments"].items():
            f = v.split()
            try:
                ok = len(f) == 3 and float(f[1]) >= 0 and (float(f[2]) > float(f[1]) or float(f[2]) == -1)
            except ValueError:
                ok = False
            if not ok:
                bad_fmt.append(u)
            elif f[0] not in wav:
                no_reco.append(f"{u} ({f[0]})")
        if bad_fmt:
            problems.append(f"{P('segments')}: expected '<utt> <recording> <start> <end>' with "
                            f"start < end: {_examples(bad_fmt)}")
        if no_reco:
            problems.append(f"{P('segments')}: recording not in wav.scp for {_examples(no_reco)}")

    problems.extend(_check_files(d, path, "feats.scp", check_load=check_audio, audio=False))
    problems.extend(_check_files(d, path, "wav.scp", check_load=check_audio, audio=True, fs=fs))
    return problems


def _check_files(d: DataDir, path: str, name: str, check_load: bool, audio: bool,
                 fs: Optional[int] = None) -> List[str]:
    """Existence of the referenced files (cheap, always); with check_load, read every entry."""
    if name not in d.tables:
        return []
    table = d.tables[name]
    full = os.path.join(path, name)
    problems, missing, unreadable, wrong_rate, empty, wrong_len = [], [], [], [], [], []
    exists_cache: Dict[str, bool] = {}
    for key, value in table.items():
        f = _file_of(value)
        if f is not None:
            if f not in exists_cache:
                exists_cache[f] = os.path.isfile(f)
            if not exists_cache[f]:
                missing.append(f"{key} ({f})")
    if missing:
        problems.append(f"{full}: {len(missing)} file(s) do not exist: {_examples(missing)}")
    if not check_load:
        return problems
    num_samples = d.tables.get("utt2num_samples", {}) if not d.has_segments else {}
    missing_keys = {m.split(" ")[0] for m in missing}
    for i, (key, value) in enumerate(table.items(), 1):
        if i % 5000 == 0:
            print(f"validate: checked {i}/{len(table)} entries of {full}", file=sys.stderr)
        if key in missing_keys:
            continue
        try:
            if audio:
                n, rate = audio_info(value)
            else:
                n, rate = _feats_rows(value), None
        except Exception as e:  # any reader error: report it against this entry
            unreadable.append(f"{key} ({value}: {type(e).__name__}: {str(e).strip()[:120]})")
            continue
        if n <= 0:
            empty.append(key)
        if audio and fs is not None and rate != fs:
            wrong_rate.append(f"{key} ({rate} Hz)")
        if audio and key in num_samples and not _length_agrees(n, rate, num_samples[key]):
            wrong_len.append(f"{key} ({n} samples at {rate} Hz, utt2num_samples says {num_samples[key]})")
    if unreadable:
        problems.append(f"{full}: {len(unreadable)} entr(y/ies) cannot be read: {_examples(unreadable)}")
    if empty:
        problems.append(f"{full}: empty (0 samples/frames): {_examples(empty)}")
    if wrong_rate:
        problems.append(f"{full}: sample rate is not {fs} Hz for {_examples(wrong_rate)}")
    if wrong_len:
        problems.append(f"{os.path.join(path, 'utt2num_samples')}: disagrees with the audio for "
                        f"{_examples(wrong_len)}")
    return problems


def _length_agrees(n: int, rate: int, listed: str) -> bool:
    """utt2num_samples lists the samples at the audio's own rate (a dump's: raw, raw_<R>), or, for a
    data dir whose source audio is at another rate, at the model's 16 kHz (recipe stage 2 resamples;
    within 1 ms, as metadata durations are rounded)."""
    try:
        want = int(listed.strip())
    except ValueError:
        return False
    if n == want or rate == 16000:
        return n == want
    return abs(n * 16000 / rate - want) <= 16


def _feats_rows(value: str) -> int:
    if value.endswith(".npy"):
        import numpy

        return numpy.load(value, mmap_mode="r").shape[0]
    import kaldiio

    return kaldiio.load_mat(value).shape[0]


# ----------------------------------------------------------------------------------------------
# Fixing, filtering, copying, combining


def fix(path: str, backup: bool = True, log=print) -> Tuple[int, int]:
    """Sort, drop malformed/duplicate lines, keep the utterances present in every per-utterance
    table (and with a non-empty transcript), rebuild spk2utt. Returns (kept, removed)."""
    problems: List[str] = []
    d = DataDir.load(path, problems)
    for p in problems:
        log(f"fix_data_dir: fixing {p}")
    keep = set(d.utt2spk)
    before = len(keep)
    for name in d.names("utt"):
        keep &= set(d.tables[name])
    if "text" in d.tables:
        empty = {u for u in keep if not d.tables["text"][u].strip()}
        if empty:
            log(f"fix_data_dir: removing {len(empty)} utterance(s) with an empty transcript: "
                f"{_examples(sorted_ids(empty))}")
        keep -= empty
    if d.has_segments:
        wav = d.tables.get("wav.scp", {})
        keep = {u for u in keep if d.tables["segments"][u].split()[:1] and
                d.tables["segments"][u].split()[0] in wav}
    all_ids = set().union(*(set(d.tables[n]) for n in d.names("utt")))
    if backup:
        bdir = os.path.join(path, ".backup")
        os.makedirs(bdir, exist_ok=True)
        for name in list(d.tables) + list(d.plain):
            shutil.copy2(os.path.join(path, name), os.path.join(bdir, name))
    if not keep:
        raise DataDirError(f"{path}: no utterance is present in all of "
                           f"{', '.join(d.names('utt'))}; nothing left (originals in .backup/)")
    d.subset(keep).write(path)
    removed = len(all_ids) - len(keep)
    log(f"fix_data_dir: {path}: kept {len(keep)} utterance(s), removed {removed} "
        f"(utt2spk had {before}, all tables together {len(all_ids)})"
        + (f"; originals in {path}/.backup/" if backup else ""))
    return len(keep), removed


def durations(d: DataDir, fs: int) -> Dict[str, float]:
    """Seconds per utterance, from utt2num_samples, utt2dur, segments, or the audio headers."""
    utts = d.utt_ids()
    if "utt2num_samples" in d.tables:
        table = d.tables["utt2num_samples"]
        return {u: int(table[u]) / fs for u in utts if u in table}
    if "utt2dur" in d.tables:
        return {u: float(d.tables["utt2dur"][u]) for u in utts if u in d.tables["utt2dur"]}
    if d.has_segments and all(float(v.split()[2]) >= 0 for v in d.tables["segments"].values()):
        return {u: float(v.split()[2]) - float(v.split()[1])
                for u, v in d.tables["segments"].items()}
    if "wav.scp" not in d.tables or d.has_segments:
        raise DataDirError(f"{d.path}: no utt2num_samples, utt2dur or readable wav.scp to get "
                           f"durations from")
    out = {}
    wav = d.tables["wav.scp"]
    for i, u in enumerate(utts, 1):
        if u not in wav:
            continue
        try:
            n, rate = audio_info(wav[u])
        except Exception as e:
            raise DataDirError(f"{d.path}/wav.scp: cannot read audio of '{u}' ({wav[u]}): {e}")
        out[u] = n / rate
        if i % 2000 == 0:
            print(f"filter_by_duration: read {i}/{len(utts)} audio headers", file=sys.stderr)
    return out


def filter_by_duration(src: str, dst: str, min_s: float = 0.0, max_s: float = math.inf,
                       fs: int = 16000, log=print) -> Tuple[int, int]:
    d = DataDir.load(src)
    dur = durations(d, fs)
    keep = [u for u, s in dur.items() if min_s <= s <= max_s]
    short = sum(1 for s in dur.values() if s < min_s)
    long_ = sum(1 for s in dur.values() if s > max_s)
    if not keep:
        raise DataDirError(f"{src}: no utterance between {min_s} and {max_s} s "
                           f"({short} shorter, {long_} longer)")
    d.subset(keep).write(dst)
    hours = sum(dur[u] for u in keep) / 3600
    log(f"filter_by_duration: {src} -> {dst}: kept {len(keep)} of {len(dur)} utterances "
        f"({hours:.2f} h); removed {short} shorter than {min_s} s, {long_} longer than {max_s} s")
    return len(keep), len(dur) - len(keep)


def split_data(path: str, n: int, per_spk: bool = False) -> List[str]:
    """Write <path>/split<n>/<1..n>/ (contiguous parts of the sorted utterances); with per_spk,
    speakers are kept together (Kaldi's default)."""
    d = DataDir.load(path)
    utts = d.utt_ids()
    try:
        parts = split_by_group(utts, d.utt2spk, n) if per_spk else split_even(utts, n)
    except DataDirError as e:
        raise DataDirError(f"{path}: {e}")
    out_dirs = []
    for i, part in enumerate(parts, 1):
        out = os.path.join(path, f"split{n}", str(i))
        if os.path.isdir(out):
            shutil.rmtree(out)  # no stale files from an earlier split
        d.subset(part).write(out)
        out_dirs.append(out)
    return out_dirs


def copy_data_dir(src: str, dst: str, utt_prefix="", utt_suffix="", spk_prefix="",
                  spk_suffix="") -> None:
    d = DataDir.load(src)
    d = d.renamed(lambda u: f"{utt_prefix}{u}{utt_suffix}", lambda s: f"{spk_prefix}{s}{spk_suffix}")
    d.write(dst)


def combine(dst: str, srcs: Sequence[str], log=print) -> int:
    dirs = [DataDir.load(s) for s in srcs]
    if len({x.has_segments for x in dirs}) > 1:
        raise DataDirError("cannot combine dirs with and without segments: " + ", ".join(srcs))
    owner: Dict[str, str] = {}
    dups = []
    for x in dirs:
        for u in x.utt2spk:
            if u in owner:
                dups.append(f"{u} ({owner[u]} and {x.path})")
            owner[u] = x.path
    if dups:
        raise DataDirError(f"duplicate utterance ids across the inputs: {_examples(dups)}")
    common = set.intersection(*(set(x.tables) for x in dirs)) - {"spk2utt"}
    for name in sorted(set().union(*(set(x.tables) for x in dirs)) - common - {"spk2utt"}):
        log(f"combine_data: {name} is not in every input; not combined")
    tables: Dict[str, Dict[str, str]] = {name: {} for name in common}
    for x in dirs:
        for name in common:
            for k, v in x.tables[name].items():
                prev = tables[name].get(k)
                if prev is not None and prev != v:
                    raise DataDirError(f"combine_data: {name}: '{k}' differs between inputs")
                tables[name][k] = v
    plain = {}
    for name in set.intersection(*(set(x.plain) for x in dirs)):
        values = {x.plain[name] for x in dirs}
        if len(values) == 1:
            plain[name] = values.pop()
        else:
            log(f"combine_data: {name} differs between inputs; not copied")
    out = DataDir(tables, plain, dst)
    out.rebuild_spk2utt()
    out.write(dst)
    log(f"combine_data: {dst}: {len(owner)} utterances from {len(srcs)} dirs")
    return len(owner)


def subset_ids(utts: Sequence[str], n: int, how: str = "even") -> List[str]:
    """n utterances: the first, the last, or evenly spaced over the (sorted) list."""
    if n >= len(utts):
        return list(utts)
    if how == "first":
        return list(utts[:n])
    if how == "last":
        return list(utts[-n:])
    return [utts[(i * len(utts)) // n] for i in range(n)]


def filter_lines(lines: Iterable[str], ids: set, exclude: bool = False, field: int = 1):
    for line in lines:
        f = line.split()
        key = f[field - 1] if len(f) >= field else None
        if (key in ids) != exclude:
            yield line


if __name__ == "__main__":  # the command line lives in xytok/bin (layering: data never imports bin)
    sys.exit("the data-dir command line moved: python -m xytok.bin.datadir " + " ".join(sys.argv[1:]))
