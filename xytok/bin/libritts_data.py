"""Make a Kaldi data dir from one part of a LibriTTS-layout corpus (OpenSLR 60).

Layout read (the official one):
    <corpus>/LibriTTS/<part>/<spk>/<chapter>/<spk>_<chapter>_<para>_<sent>.wav            (24 kHz)
    <corpus>/LibriTTS/<part>/<spk>/<chapter>/<spk>_<chapter>_<para>_<sent>.normalized.txt
    <corpus>/LibriTTS/<part>/<spk>/<chapter>/<spk>_<chapter>_<para>_<sent>.original.txt
Written to --out (atomically), sorted in C (byte) order:
    wav.scp   <utt> <absolute wav path>   (24 kHz as shipped; recipe stage 2 resamples to 16 kHz, logged)
    text      <utt> <text>                (--text normalized|original, whitespace collapsed, else as given)
    utt2spk, spk2utt
Utterance ids are the file stems with `_` turned into `-` (103_1241_000000_000001 -> 103-1241-000000-000001):
with `_` speaker 1034's ids would sort before speaker 103's, and Kaldi data dirs need utterance order
to agree with speaker order. An utterance whose wav or text file is missing or empty is skipped
and counted (LibriTTS has a few); unreadable audio or a file named outside the layout is an error
naming the file.

    python -m xytok.bin.libritts_data --corpus_dir $LIBRITTS/LibriTTS --part dev-clean --out data/dev_clean
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import soundfile as sf

from xytok.bin.librispeech_data import DataPrepError, write_data_dir
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.libritts_data")

TEXT_SUFFIX = {"normalized": ".normalized.txt", "original": ".original.txt"}
SKIP_REASONS = ("missing wav", "empty wav", "missing text", "empty text")


def _utt_id(stem: str, spk: str, chap: str, where: Path) -> str:
    fields = stem.split("_")
    if len(fields) != 4 or fields[0] != spk or fields[1] != chap:
        raise DataPrepError(f"{where}: file name '{stem}' is not <spk>_<chapter>_<para>_<sent> "
                            f"with speaker {spk} and chapter {chap}")
    return "-".join(fields)


def _read_text(path: Path) -> str:
    try:
        return " ".join(path.read_text(encoding="utf-8").split())
    except UnicodeDecodeError as e:
        raise DataPrepError(f"{path}: not UTF-8 text ({e})") from None


def scan_part(part_dir: Path, text_kind: str = "normalized", check_audio: bool = True
              ) -> Tuple[List[Tuple[str, str, str, str]], Dict[str, List[str]], Counter]:
    """Sorted (utt, abs_wav, text, spk) rows, skipped {reason: [file stems]}, and sample-rate counts."""
    if text_kind not in TEXT_SUFFIX:
        raise DataPrepError(f"--text {text_kind!r}: must be one of {sorted(TEXT_SUFFIX)}")
    if not part_dir.is_dir():
        raise DataPrepError(f"{part_dir}: corpus part not found")
    chapters = sorted(p for p in part_dir.glob("*/*") if p.is_dir())
    if not chapters:
        raise DataPrepError(f"{part_dir}: no <speaker>/<chapter> directories (is this a LibriTTS part?)")
    suffix = TEXT_SUFFIX[text_kind]
    rows: List[Tuple[str, str, str, str]] = []
    skipped: Dict[str, List[str]] = {r: [] for r in SKIP_REASONS}
    rates: Counter = Counter()
    prog = ProgressLog(len(chapters), part_dir.name, unit="chapters", logger=log)
    for i, chap_dir in enumerate(chapters, 1):
        spk, chap = chap_dir.parent.name, chap_dir.name
        stems = set()
        for p in chap_dir.iterdir():
            if p.name.endswith(".wav"):
                stems.add(p.name[:-len(".wav")])
            elif p.name.endswith(suffix):
                stems.add(p.name[:-len(suffix)])
        for stem in sorted(stems):
            wav, txt = chap_dir / f"{stem}.wav", chap_dir / f"{stem}{suffix}"
            utt = _utt_id(stem, spk, chap, wav)
            if not wav.is_file():
                skipped["missing wav"].append(stem)
                continue
            if not txt.is_file():
                skipped["missing text"].append(stem)
                continue
            text = _read_text(txt)
            if not text:
                skipped["empty text"].append(stem)
                continue
            if wav.stat().st_size == 0:
                skipped["empty wav"].append(stem)
                continue
            if check_audio:
                try:
                    info = sf.info(str(wav))
                except Exception as e:  # soundfile raises LibsndfileError / RuntimeError variants
                    raise DataPrepError(f"{wav}: unreadable audio ({e})") from None
                if info.frames <= 0:
                    skipped["empty wav"].append(stem)
                    continue
                rates[info.samplerate] += 1
            rows.append((utt, str(wav.resolve()), text, spk))
        prog.update(i, extra=f" ({len(rows)} utts)")
    if not rows:
        raise DataPrepError(f"{part_dir}: no usable utterances (skipped: "
                            + ", ".join(f"{len(v)} {k}" for k, v in skipped.items()) + ")")
    rows.sort(key=lambda r: r[0].encode())
    return rows, skipped, rates


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.libritts_data",
                                description="Kaldi data dir (wav.scp, text, utt2spk, spk2utt) from a "
                                            "LibriTTS-layout part (OpenSLR 60).")
    p.add_argument("--corpus_dir", required=True, help="the directory named LibriTTS (holds the parts)")
    p.add_argument("--part", required=True, help="part name, e.g. dev-clean")
    p.add_argument("--out", required=True, help="output data dir, e.g. data/dev_clean")
    p.add_argument("--text", choices=sorted(TEXT_SUFFIX), default="normalized",
                   help="which transcript to use: <utt>.normalized.txt or <utt>.original.txt "
                        "[default: %(default)s]")
    p.add_argument("--no_check_audio", action="store_true",
                   help="skip opening every wav (faster on a trusted tree; empty files are still skipped)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [libritts_data] %(message)s")
    t0 = time.time()
    try:
        rows, skipped, rates = scan_part(Path(a.corpus_dir) / a.part, a.text, check_audio=not a.no_check_audio)
        write_data_dir(rows, Path(a.out))
    except DataPrepError as e:
        log.error("%s", e)
        return 1
    n_skipped = sum(len(v) for v in skipped.values())
    log.info("%s: %d utterances, %d speakers, %s text -> %s (%.1fs)", a.part, len(rows),
             len({r[3] for r in rows}), a.text, a.out, time.time() - t0)
    log.info("%s: skipped %d utterance(s): %s", a.part, n_skipped,
             ", ".join(f"{len(v)} {k}" for k, v in skipped.items()))
    for reason, stems in skipped.items():
        if stems:
            log.info("%s: %s: %s%s", a.part, reason, " ".join(stems[:5]), " ..." if len(stems) > 5 else "")
    if rates:
        log.info("%s: sample rates %s (recipe stage 2 resamples to 16000 Hz)", a.part,
                 ", ".join(f"{sr} Hz x{n}" for sr, n in sorted(rates.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
