"""AISHELL-1 (OpenSLR 33): extract the per-speaker tarballs, and make Kaldi data dirs train/dev/test.

Layout (the release's own): data_aishell.tgz holds
    data_aishell/wav/<spk>.tar.gz                        one per speaker, each holding <set>/<spk>/*.wav
    data_aishell/transcript/aishell_transcript_v0.8.txt  lines `<uttid> <words separated by spaces>`
and after the nested extraction
    data_aishell/wav/{train,dev,test}/<spk>/<uttid>.wav  (16 kHz mono, uttid e.g. BAC009S0002W0122)

    python -m xytok.bin.aishell_data extract --wav_dir $AISHELL/data_aishell/wav [--remove_archives]
    python -m xytok.bin.aishell_data prepare --corpus_dir $AISHELL/data_aishell --sets train dev test --out_dir data

`extract` unpacks every <spk>.tar.gz into wav/ and writes wav/.<spk>.tar.gz.complete after it, so a
killed run redoes only the unfinished tarball; a tree without tarballs (extracted before) is used as is.
`prepare` writes data/<set>/{wav.scp,text,utt2spk,spk2utt} (atomically, C-sorted). Utterance ids are
the corpus ids; the speaker is the wav's directory (S0002). All AISHELL-1 ids start BAC009S<spk>, so
utterance and speaker orders agree (validate_data_dir.sh checks it). The Mandarin text is kept as the
transcript gives it: words separated by single spaces (runs of whitespace collapsed). Utterances
without a transcript line, or with an empty wav, are dropped and counted; unreadable audio, a
duplicate or empty transcript line is an error naming the file and line.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import soundfile as sf

from xytok.bin.librispeech_data import DataPrepError, write_data_dir
from xytok.data.download import DownloadError, extract
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.aishell_data")

SETS = ("train", "dev", "test")
TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"


def extract_speaker_tarballs(wav_dir: Path, remove_archives: bool = False) -> int:
    """Extract wav/<spk>.tar.gz (markers: wav/.<spk>.tar.gz.complete). Returns how many were extracted now."""
    if not wav_dir.is_dir():
        raise DataPrepError(f"{wav_dir}: not found (expected data_aishell/wav)")
    tarballs = sorted(wav_dir.glob("*.tar.gz"))
    todo = [t for t in tarballs if not (wav_dir / f".{t.name}.complete").exists()]
    if not tarballs:
        log.info("%s: no speaker tarballs: using the extracted tree as is", wav_dir)
    elif not todo:
        log.info("%s: all %d speaker tarballs already extracted", wav_dir, len(tarballs))
    prog = ProgressLog(len(todo), "speaker tarballs", unit="tarballs", logger=log)
    for i, t in enumerate(todo, 1):
        try:
            extract(t, wav_dir, wav_dir / f".{t.name}.complete")
        except DownloadError as e:
            raise DataPrepError(str(e)) from None
        prog.update(i)
    if remove_archives:
        for t in tarballs:
            t.unlink()
    return len(todo)


def read_transcript(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise DataPrepError(f"{path}: transcript file not found")
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            utt, words = fields[0], fields[1:]
            if not words:
                raise DataPrepError(f"{path}:{n}: empty transcript for '{utt}'")
            if utt in out:
                raise DataPrepError(f"{path}:{n}: duplicate utterance id '{utt}'")
            out[utt] = " ".join(words)
    if not out:
        raise DataPrepError(f"{path}: no transcript lines")
    return out


def scan_set(set_dir: Path, texts: Dict[str, str], check_audio: bool = True
             ) -> Tuple[List[Tuple[str, str, str, str]], List[str], List[str]]:
    """Sorted (utt, abs_wav, text, spk) rows, and the ids dropped for no transcript / an empty wav."""
    if not set_dir.is_dir():
        raise DataPrepError(f"{set_dir}: not found (is the corpus extracted? see local/data.sh)")
    spk_dirs = sorted(p for p in set_dir.iterdir() if p.is_dir())
    if not spk_dirs:
        raise DataPrepError(f"{set_dir}: no speaker directories")
    rows: List[Tuple[str, str, str, str]] = []
    no_text: List[str] = []
    empty: List[str] = []
    seen: Dict[str, Path] = {}
    prog = ProgressLog(len(spk_dirs), set_dir.name, unit="speakers", logger=log)
    for i, spk_dir in enumerate(spk_dirs, 1):
        spk = spk_dir.name
        for wav in sorted(spk_dir.glob("*.wav")):
            utt = wav.stem
            if utt in seen:
                raise DataPrepError(f"{wav}: duplicate utterance id '{utt}' (also {seen[utt]})")
            seen[utt] = wav
            if utt not in texts:
                no_text.append(utt)
                continue
            if wav.stat().st_size == 0:
                empty.append(utt)
                continue
            if check_audio:
                try:
                    frames = sf.info(str(wav)).frames
                except Exception as e:  # soundfile raises LibsndfileError / RuntimeError variants
                    raise DataPrepError(f"{wav}: unreadable audio ({e})") from None
                if frames <= 0:
                    empty.append(utt)
                    continue
            rows.append((utt, str(wav.resolve()), texts[utt], spk))
        prog.update(i, extra=f" ({len(rows)} utts)")
    if not rows:
        raise DataPrepError(f"{set_dir}: no utterance with a transcript ({len(no_text)} wavs without one)")
    rows.sort(key=lambda r: r[0].encode())
    return rows, no_text, empty


def prepare(corpus_dir: Path, sets: Sequence[str], out_dir: Path, transcript: Optional[Path] = None,
            check_audio: bool = True) -> Dict[str, int]:
    for s in sets:
        if s not in SETS:
            raise DataPrepError(f"unknown AISHELL-1 set '{s}' (known: {' '.join(SETS)})")
    texts = read_transcript(transcript or corpus_dir / TRANSCRIPT)
    sizes = {}
    used = set()
    for s in sets:
        rows, no_text, empty = scan_set(corpus_dir / "wav" / s, texts, check_audio)
        write_data_dir(rows, out_dir / s)
        used.update(r[0] for r in rows)
        sizes[s] = len(rows)
        log.info("%s: %d utterances, %d speakers -> %s; dropped %d without transcript%s, %d empty wav%s",
                 s, len(rows), len({r[3] for r in rows}), out_dir / s, len(no_text),
                 f" (e.g. {' '.join(no_text[:3])})" if no_text else "", len(empty),
                 f" (e.g. {' '.join(empty[:3])})" if empty else "")
    if set(sets) == set(SETS):
        unused = len(texts) - len(used)
        log.info("transcript: %d lines, %d without a (usable) wav in train/dev/test", len(texts), unused)
    return sizes


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.aishell_data",
                                description="AISHELL-1 (OpenSLR 33): nested extraction and Kaldi data dirs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="extract data_aishell/wav/<spk>.tar.gz (resumable, markers)")
    e.add_argument("--wav_dir", required=True, help="data_aishell/wav")
    e.add_argument("--remove_archives", action="store_true", help="delete the speaker tarballs afterwards")
    q = sub.add_parser("prepare", help="write data/<set> from data_aishell/wav/<set>/<spk>/*.wav + transcript")
    q.add_argument("--corpus_dir", required=True, help="the directory named data_aishell")
    q.add_argument("--sets", nargs="+", default=list(SETS), help="sets to prepare [default: train dev test]")
    q.add_argument("--out_dir", required=True, help="writes OUT_DIR/<set>")
    q.add_argument("--transcript", default=None, help=f"[default: CORPUS_DIR/{TRANSCRIPT}]")
    q.add_argument("--no_check_audio", action="store_true", help="skip opening every wav")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [aishell_data] %(message)s")
    t0 = time.time()
    try:
        if a.cmd == "extract":
            n = extract_speaker_tarballs(Path(a.wav_dir), a.remove_archives)
            log.info("extracted %d speaker tarball(s) in %.1fs", n, time.time() - t0)
        else:
            prepare(Path(a.corpus_dir), a.sets, Path(a.out_dir),
                    Path(a.transcript) if a.transcript else None, check_audio=not a.no_check_audio)
            log.info("done in %.1fs", time.time() - t0)
    except DataPrepError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
