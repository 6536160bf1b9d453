"""Make a Kaldi data dir from one part of a LibriSpeech-layout corpus.

Layout read (the official one):  <corpus>/LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
                                 <corpus>/LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>.trans.txt
Written to --out (atomically: built in a temp dir, then renamed):
    wav.scp   <utt> <absolute audio path>        (soundfile reads flac directly; no `flac -d |` pipes)
    text      <utt> <UPPERCASE TRANSCRIPT>       (LibriSpeech's own text, unchanged)
    utt2spk   <utt> <spk>
    spk2utt   <spk> <utt> ...
all sorted in C (byte) order. Every audio file needs a transcript line and vice versa; unreadable or
empty audio and duplicate ids are errors that name the file.

    python -m xytok.bin.librispeech_data --corpus_dir $LIBRISPEECH/LibriSpeech --part dev-clean --out data/dev_clean
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import soundfile as sf

from xytok.data.datadir import atomic_directory
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.librispeech_data")

AUDIO_EXTS = (".flac", ".wav")


class DataPrepError(RuntimeError):
    """Bad corpus input; the message names the file and the problem."""


def _read_transcripts(trans: Path) -> Dict[str, str]:
    out: Dict[str, str] = {}
    with open(trans, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 or not parts[1].strip():
                raise DataPrepError(f"{trans}:{n}: empty transcript for '{parts[0]}'")
            if parts[0] in out:
                raise DataPrepError(f"{trans}:{n}: duplicate utterance id '{parts[0]}'")
            out[parts[0]] = " ".join(parts[1].split())
    return out


def _check_audio(path: Path) -> None:
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError variants
        raise DataPrepError(f"{path}: unreadable audio ({e})") from e
    if info.frames <= 0:
        raise DataPrepError(f"{path}: empty audio (0 samples)")


def scan_part(part_dir: Path, check_audio: bool = True) -> List[Tuple[str, str, str, str]]:
    """Return sorted (utt, abs_path, text, spk) for one LibriSpeech part."""
    if not part_dir.is_dir():
        raise DataPrepError(f"{part_dir}: corpus part not found")
    rows: List[Tuple[str, str, str, str]] = []
    seen: Dict[str, Path] = {}
    chapters = sorted(p for p in part_dir.glob("*/*") if p.is_dir())
    if not chapters:
        raise DataPrepError(f"{part_dir}: no <speaker>/<chapter> directories (is this a LibriSpeech part?)")
    prog = ProgressLog(len(chapters), part_dir.name, unit="chapters", logger=log)
    for i, chap_dir in enumerate(chapters, 1):
        spk, chap = chap_dir.parent.name, chap_dir.name
        trans_file = chap_dir / f"{spk}-{chap}.trans.txt"
        audio = {p.stem: p for p in chap_dir.iterdir() if p.suffix.lower() in AUDIO_EXTS}
        if not trans_file.exists():
            if audio:
                raise DataPrepError(f"{trans_file}: missing transcript file for {len(audio)} audio files "
                                    f"(e.g. {sorted(audio.values())[0]})")
            continue
        texts = _read_transcripts(trans_file)
        for utt in sorted(audio):
            if utt not in texts:
                raise DataPrepError(f"{audio[utt]}: no transcript for '{utt}' in {trans_file}")
        for utt, text in texts.items():
            if utt not in audio:
                raise DataPrepError(f"{trans_file}: transcript for '{utt}' but no audio file "
                                    f"{chap_dir / (utt + '.flac')}")
            if not utt.startswith(f"{spk}-{chap}-"):
                raise DataPrepError(f"{trans_file}: utterance id '{utt}' does not start with '{spk}-{chap}-'")
            if utt in seen:
                raise DataPrepError(f"{audio[utt]}: duplicate utterance id '{utt}' (also {seen[utt]})")
            seen[utt] = audio[utt]
            if check_audio:
                _check_audio(audio[utt])
            rows.append((utt, str(audio[utt].resolve()), text, spk))
        prog.update(i, extra=f" ({len(rows)} utts)")
    if not rows:
        raise DataPrepError(f"{part_dir}: no utterances found")
    # C-locale order = Python's code-point order for the ASCII ids LibriSpeech uses.
    rows.sort(key=lambda r: r[0].encode())
    return rows


def write_data_dir(rows: Sequence[Tuple[str, str, str, str]], out: Path) -> None:
    with atomic_directory(out) as tmp_dir:
        tmp = Path(tmp_dir)
        spk2utt: Dict[str, List[str]] = defaultdict(list)
        with open(tmp / "wav.scp", "w") as w, open(tmp / "text", "w", encoding="utf-8") as t, \
                open(tmp / "utt2spk", "w") as u:
            for utt, path, text, spk in rows:
                if any(c.isspace() for c in path):
                    raise DataPrepError(f"{path}: audio path contains whitespace (not allowed in wav.scp)")
                w.write(f"{utt} {path}\n")
                t.write(f"{utt} {text}\n")
                u.write(f"{utt} {spk}\n")
                spk2utt[spk].append(utt)
        with open(tmp / "spk2utt", "w") as s:
            for spk in sorted(spk2utt, key=str.encode):
                s.write(f"{spk} {' '.join(spk2utt[spk])}\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.librispeech_data",
                                description="Kaldi data dir (wav.scp, text, utt2spk, spk2utt) from a "
                                            "LibriSpeech-layout part.")
    p.add_argument("--corpus_dir", required=True, help="the directory named LibriSpeech (holds the parts)")
    p.add_argument("--part", required=True, help="part name, e.g. dev-clean")
    p.add_argument("--out", required=True, help="output data dir, e.g. data/dev_clean")
    p.add_argument("--no_check_audio", action="store_true",
                   help="skip opening every audio file (faster on a trusted tree)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [librispeech_data] %(message)s")
    t0 = time.time()
    try:
        rows = scan_part(Path(a.corpus_dir) / a.part, check_audio=not a.no_check_audio)
        write_data_dir(rows, Path(a.out))
    except DataPrepError as e:
        log.error("%s", e)
        return 1
    log.info("%s: %d utterances, %d speakers -> %s (%.1fs)", a.part, len(rows),
             len({r[3] for r in rows}), a.out, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
