"""Kaldi data dir from a `path|speaker|text` metadata file (egs/TEMPLATE's local/data.sh, stage 1).

    python -m xytok.bin.prepare_data --metadata db/metadata.txt --set train --out data/train
    python -m xytok.bin.prepare_data --metadata db/dev.txt --out data/dev

Metadata: one utterance per line, fields separated by `|` (--sep):
    path|speaker|text            every line belongs to the set being prepared (one file per set)
    path|speaker|text|set        one file for all sets: --set NAME keeps the lines whose 4th field is NAME
`path` is relative to --audio_root (default: the metadata file's directory) or absolute; any format
and rate libsndfile reads (WAV, FLAC, OGG, MP3); stage 2 dumps it as 16 kHz mono. Blank lines and
lines starting with `#` are skipped. The text is kept as written except whitespace (collapsed), or
normalised by --text_norm (upper: upper-cased; upper_nopunct: also without punctuation other than
apostrophes, like LibriSpeech transcripts).

Writes wav.scp (absolute paths), text, utt2spk, spk2utt and utt2num_samples (lengths at --fs, from
the audio headers), sorted in C (byte) order, atomically. Utterance ids are `<speaker>-<file name
without extension>` (the file name alone when it already starts with `<speaker>-` or `<speaker>_`;
whitespace in it becomes `_`), so utterance and speaker orders agree, as Kaldi tools require.
Every problem (missing or unreadable audio, empty transcript, duplicate id, malformed line) is
listed at once with its line number, and nothing is written.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import unicodedata
from typing import Dict, List, Optional, Sequence

from xytok.data.datadir import DataDir, atomic_directory, utt2spk_to_spk2utt, validate

MAX_REPORTED = 50  # problems printed (all are counted)


class PrepareError(Exception):
    """Problems in the metadata; the message lists them with line numbers."""


def normalise_text(text: str, how: str) -> str:
    text = " ".join(text.split())
    if how in ("upper", "upper_nopunct"):
        text = text.upper()
    if how == "upper_nopunct":
        # Unicode punctuation (P*) and symbols (S*) go; apostrophes inside words stay (DON'T)
        text = "".join(" " if unicodedata.category(c)[0] in "PS" and c not in "'’" else c for c in text)
        text = re.sub(r"(?<!\w)['’]|['’](?!\w)", " ", text)
        text = " ".join(text.split())
    return text


def length_at(frames: int, rate: int, fs: int) -> int:
    """Samples after resampling to fs (xytok.audio.resample: polyphase, ceil(n * up / down))."""
    if rate == fs:
        return frames
    g = math.gcd(rate, fs)
    return -(-frames * (fs // g) // (rate // g))


def utterance_id(path: str, speaker: str) -> str:
    stem = re.sub(r"\s+", "_", os.path.splitext(os.path.basename(path))[0])
    if stem.startswith(f"{speaker}-") or stem.startswith(f"{speaker}_"):
        return stem
    return f"{speaker}-{stem}"


def prepare(metadata: str, out: str, set_name: Optional[str] = None, audio_root: Optional[str] = None,
            sep: str = "|", text_norm: str = "keep", fs: int = 16000, log=print) -> DataDir:
    import soundfile

    root = audio_root or os.path.dirname(os.path.abspath(metadata))
    problems: List[str] = []
    rows = []  # (line number, utt, path, speaker, text)
    with open(metadata, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = [x.strip() for x in line.split(sep)]
            if len(fields) not in (3, 4):
                problems.append(f"line {n}: expected path{sep}speaker{sep}text[{sep}set], "
                                f"got {len(fields)} field(s): {line[:80]!r}")
                continue
            if set_name is not None:
                if len(fields) != 4:
                    problems.append(f"line {n}: no set (4th) field, but --set {set_name} selects by it")
                    continue
                if fields[3] != set_name:
                    continue
            path, speaker, text = fields[:3]
            if not path:
                problems.append(f"line {n}: empty path")
                continue
            if not speaker or re.search(r"\s", speaker):
                problems.append(f"line {n} ({path}): speaker id {speaker!r} is empty or has whitespace")
                continue
            text = normalise_text(text, text_norm)
            if not text:
                problems.append(f"line {n} ({path}): empty transcript (drop the line, or transcribe it)")
                continue
            full = path if os.path.isabs(path) else os.path.join(root, path)
            rows.append((n, utterance_id(path, speaker), os.path.abspath(full), speaker, text))
    if not rows and not problems:
        which = f" with set '{set_name}'" if set_name is not None else ""
        problems.append(f"no utterance lines{which}")

    first_line: Dict[str, int] = {}
    wav, text_t, utt2spk, num_samples = {}, {}, {}, {}
    rates: Dict[int, int] = {}
    for i, (n, utt, path, speaker, text) in enumerate(rows, 1):
        if i % 5000 == 0:  # a large corpus: one audio header read per line
            log(f"prepare_data: {metadata}: audio headers of {i}/{len(rows)} utterances read")
        if utt in first_line:
            problems.append(f"line {n} ({path}): duplicate utterance id {utt!r} (also line {first_line[utt]}); "
                            f"ids are <speaker>-<file name>, so file names must differ within a speaker")
            continue
        first_line[utt] = n
        if not os.path.isfile(path):
            problems.append(f"line {n}: audio file not found: {path}")
            continue
        try:
            info = soundfile.info(path)
        except Exception as e:  # libsndfile: unknown format, corrupt header
            problems.append(f"line {n}: audio not readable ({path}): {str(e).strip()[:160]}")
            continue
        if info.frames <= 0:
            problems.append(f"line {n}: audio has no samples: {path}")
            continue
        wav[utt], text_t[utt], utt2spk[utt] = path, text, speaker
        num_samples[utt] = str(length_at(info.frames, info.samplerate, fs))
        rates[info.samplerate] = rates.get(info.samplerate, 0) + 1

    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise PrepareError(f"{metadata}{f' (set {set_name})' if set_name else ''}: {len(problems)} problem(s):\n  "
                           + "\n  ".join(shown) + more)

    d = DataDir({"wav.scp": wav, "text": text_t, "utt2spk": utt2spk,
                 "spk2utt": utt2spk_to_spk2utt(utt2spk), "utt2num_samples": num_samples}, {})
    with atomic_directory(out) as tmp:
        d.write(tmp)
        bad = validate(tmp, no_feats=True)
        if bad:  # e.g. speaker ids that are prefixes of one another ("a" and "a-b")
            raise PrepareError(f"{out}: the prepared data dir is not valid:\n  " + "\n  ".join(bad))
    hours = sum(int(v) for v in num_samples.values()) / fs / 3600
    rate_s = ", ".join(f"{r} Hz: {c}" for r, c in sorted(rates.items()))
    log(f"prepare_data: {out}: {len(wav)} utterances, {len(set(utt2spk.values()))} speakers, {hours:.2f} h; "
        f"source rates {rate_s} (stage 2 dumps {fs} Hz); text_norm={text_norm}")
    return d


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.prepare_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata", required=True, help="path|speaker|text[|set] lines")
    p.add_argument("--out", required=True, help="data dir to write (replaced atomically)")
    p.add_argument("--set", dest="set_name", help="keep the lines whose 4th field is this set name")
    p.add_argument("--audio_root", help="base of relative paths [default: the metadata file's directory]")
    p.add_argument("--sep", default="|", help="field separator [default: %(default)s]")
    p.add_argument("--text_norm", choices=["keep", "upper", "upper_nopunct"], default="keep",
                   help="transcript normalisation (whitespace is always collapsed) [default: %(default)s]")
    p.add_argument("--fs", type=int, default=16000, help="rate of utt2num_samples (the dump's) [default: %(default)s]")
    a = p.parse_args(argv)
    try:
        prepare(a.metadata, a.out, a.set_name, a.audio_root, a.sep, a.text_norm, a.fs)
    except (PrepareError, OSError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
