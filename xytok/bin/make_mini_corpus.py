"""Build the egs/mini corpus in LibriSpeech layout (so it goes through the same data prep as LibriSpeech).

    python -m xytok.bin.make_mini_corpus --sentences local/harvard_sentences.txt --out db/LibriSpeech

Speech sources (all offline, Debian main):
  * flite voices kal16, awb, rms, slt reading public-domain Harvard sentences (IEEE 1969), plus two
    pseudo-speakers made with `sox ... pitch` (slt lowered, kal16 raised): 6 synthetic speakers;
  * the 5 real LibriVox utterances of the `pocketsphinx-testdata` package (one real reader).
Split (by sentence, so test text is never seen in training; all 6 voices appear in every split):
  train: Harvard lists 1-10 and 13-15 (130 sentences), each by one voice and the first 70 by a second
         voice too -> 200 utterances; plus, with --extra_sentences (egs/mini: 600 sentences written
         for xytok, local/extra_sentences.txt), each extra sentence read by --extra_voices voices
         (default 2) -> 1400 utterances in all;
  dev:   list 11 read by 3 voices -> 30 utterances;
  test:  list 12 read by 3 voices -> 30 utterances + the 5 LibriVox utterances (an unseen, real speaker).
Everything is 16 kHz mono 16-bit flac: <out>/<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac with
<spk>-<chapter>.trans.txt (uppercase, punctuation removed except apostrophes). Idempotent: files that
exist are kept, and a .complete marker (holding a hash of the plan) makes a re-run instant.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import soundfile as sf

from xytok.progress import ProgressLog

log = logging.getLogger("xytok.make_mini_corpus")

# speaker id -> (flite voice, sox pitch shift in cents or 0)
SPEAKERS: Dict[str, Tuple[str, int]] = {
    "1001": ("kal16", 0), "1002": ("awb", 0), "1003": ("rms", 0), "1004": ("slt", 0),
    "1005": ("slt", -350), "1006": ("kal16", 300),
}
CHAPTER = {"train": "1", "dev": "2", "test": "3"}
TRAIN_LISTS = list(range(1, 11)) + [13, 14, 15]
DEV_LISTS, TEST_LISTS = [11], [12]
LIBRIVOX_DIR = "/usr/share/pocketsphinx/test/data/librivox"
LIBRIVOX_SPK, LIBRIVOX_CHAPTER = "9000", "1"
FS = 16000


class CorpusError(RuntimeError):
    pass


def normalize_text(s: str) -> str:
    """LibriSpeech style: uppercase words, apostrophes kept, other punctuation removed."""
    s = re.sub(r"[^A-Za-z' ]+", " ", s.replace("-", " "))
    return " ".join(s.upper().split())


def read_sentences(path: str) -> Dict[Tuple[int, int], str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^(\d+)\.(\d+)\s+(.+)$", line)
            if not m:
                raise CorpusError(f"{path}:{n}: expected '<list>.<n> <sentence>', got {line!r}")
            out[(int(m.group(1)), int(m.group(2)))] = m.group(3)
    return out


def plan(sentences: Dict[Tuple[int, int], str], extra: Optional[Dict[Tuple[int, int], str]] = None,
         extra_voices: int = 2) -> List[Tuple[str, str, str, str]]:
    """(part, spk, utt_number, sentence) for every synthetic utterance.

    `extra`: more training-only sentences (list numbers >= 100, so utterance numbers never clash with
    the Harvard lists), each read by `extra_voices` of the 6 speakers, rotating."""
    spks = sorted(SPEAKERS)
    rows = []

    def keys(lists):
        ks = sorted(k for k in sentences if k[0] in lists)
        missing = [lst for lst in lists if not any(k[0] == lst for k in ks)]
        if missing:
            raise CorpusError(f"sentence file lacks Harvard list(s) {missing}")
        return ks

    def num(k):  # utterance number unique within a speaker: list*100 + n
        return f"{k[0] * 100 + k[1]:04d}"

    for i, k in enumerate(keys(TRAIN_LISTS)):
        rows.append(("train", spks[i % 6], num(k), sentences[k]))
        if i < 70:
            rows.append(("train", spks[(i + 3) % 6], num(k), sentences[k]))
    if extra:
        if not 1 <= extra_voices <= len(spks):
            raise CorpusError(f"--extra_voices must be 1..{len(spks)}, got {extra_voices}")
        low = [k for k in extra if k[0] < 100]
        if low:
            raise CorpusError(f"extra sentences must use list numbers >= 100 (found list {low[0][0]})")
        step = len(spks) // extra_voices
        for i, k in enumerate(sorted(extra)):
            for j in range(extra_voices):
                rows.append(("train", spks[(i + j * step) % len(spks)], num(k), extra[k]))
    for part, lists in (("dev", DEV_LISTS), ("test", TEST_LISTS)):
        for i, k in enumerate(keys(lists)):
            for off in (0, 2, 4):
                rows.append((part, spks[(i + off) % 6], num(k), sentences[k]))
    return rows


def _run(cmd: List[str], what: str) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise CorpusError(f"{what}: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-300:]}")


def synthesize(text: str, spk: str, out: Path, tmpdir: str) -> None:
    voice, pitch = SPEAKERS[spk]
    raw = os.path.join(tmpdir, f"{out.stem}.raw.wav")
    _run(["flite", "-voice", voice, "-t", text, "-o", raw], f"flite voice {voice} for {out.name}")
    tmp = out.with_name(f".{out.stem}.tmp.flac")
    cmd = ["sox", raw, "-r", str(FS), "-c", "1", "-b", "16", str(tmp)]
    if pitch:
        cmd += ["pitch", str(pitch)]
    cmd += ["rate", str(FS), "gain", "-n", "-3"]  # same peak level for every voice
    _run(cmd, f"sox for {out.name}")
    os.remove(raw)
    os.replace(tmp, out)


def _write_trans(chap_dir: Path, lines: List[Tuple[str, str]]) -> None:
    spk, chap = chap_dir.parent.name, chap_dir.name
    path = chap_dir / f"{spk}-{chap}.trans.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{u} {t}\n" for u, t in sorted(lines)), encoding="utf-8")
    os.replace(tmp, path)


def add_librivox(out: Path, src: str) -> List[Tuple[str, str]]:
    """Copy the pocketsphinx-testdata LibriVox utterances into test/9000/1 (as flac)."""
    trans_file = os.path.join(src, "transcription")
    if not os.path.exists(trans_file):
        raise CorpusError(f"{trans_file} not found: install the Debian package pocketsphinx-testdata "
                          "(tools/install.sh does it) or pass --no_librivox")
    chap_dir = out / "test" / LIBRIVOX_SPK / LIBRIVOX_CHAPTER
    chap_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in open(trans_file, encoding="utf-8"):
        m = re.match(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\((\S+)\)\s*$", line)
        if not m:
            continue
        words, fid = m.group(1), m.group(2)
        wav = os.path.join(src, f"{fid}.wav")
        num = fid.rsplit("-", 1)[-1]
        utt = f"{LIBRIVOX_SPK}-{LIBRIVOX_CHAPTER}-{num}"
        dst = chap_dir / f"{utt}.flac"
        if not dst.exists():
            data, sr = sf.read(wav, dtype="int16")
            if sr != FS:
                raise CorpusError(f"{wav}: {sr} Hz, expected {FS}")
            tmp = dst.with_name(f".{dst.stem}.tmp.flac")
            sf.write(str(tmp), data, sr, subtype="PCM_16", format="FLAC")
            os.replace(tmp, dst)
        lines.append((utt, normalize_text(words)))
    if not lines:
        raise CorpusError(f"{trans_file}: no transcripts parsed")
    _write_trans(chap_dir, lines)
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.make_mini_corpus",
                                description="Build the egs/mini corpus (flite voices + LibriVox) in "
                                            "LibriSpeech layout.")
    p.add_argument("--sentences", required=True, help="Harvard sentence file ('<list>.<n> sentence' lines)")
    p.add_argument("--out", required=True, help="output dir (plays the role of LibriSpeech/): train/ dev/ test/")
    p.add_argument("--extra_sentences", default=None,
                   help="more training-only sentences, same format, list numbers >= 100")
    p.add_argument("--extra_voices", type=int, default=2, help="speakers reading each extra sentence")
    p.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    p.add_argument("--no_librivox", action="store_true", help="leave out the pocketsphinx-testdata utterances")
    p.add_argument("--librivox_dir", default=LIBRIVOX_DIR)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [make_mini_corpus] %(message)s")
    for tool in ("flite", "sox"):
        if shutil.which(tool) is None:
            log.error("'%s' not found: install the Debian packages flite and sox (tools/install.sh does it)", tool)
            return 1
    try:
        extra = read_sentences(a.extra_sentences) if a.extra_sentences else None
        rows = plan(read_sentences(a.sentences), extra, a.extra_voices)
    except (OSError, CorpusError) as e:
        log.error("%s", e)
        return 1
    out = Path(a.out)
    signature = hashlib.md5(json.dumps([rows, SPEAKERS, not a.no_librivox]).encode()).hexdigest()
    marker = out / ".complete"
    if marker.exists() and marker.read_text().strip() == signature:
        log.info("%s: corpus already complete", out)
        return 0

    trans: Dict[Path, List[Tuple[str, str]]] = defaultdict(list)
    todo = []
    for part, spk, num, sentence in rows:
        chap_dir = out / part / spk / CHAPTER[part]
        utt = f"{spk}-{CHAPTER[part]}-{num}"
        trans[chap_dir].append((utt, normalize_text(sentence)))
        dst = chap_dir / f"{utt}.flac"
        if not dst.exists():
            todo.append((sentence, spk, dst))
    for d in trans:
        d.mkdir(parents=True, exist_ok=True)
    log.info("%d synthetic utterances planned, %d to synthesize with %d jobs", len(rows), len(todo), a.nj)
    t0 = time.time()
    done, prog = 0, ProgressLog(len(todo), "synthesized", logger=log)
    try:
        with tempfile.TemporaryDirectory() as tmpdir, ThreadPoolExecutor(max(1, a.nj)) as ex:
            for _ in ex.map(lambda r: synthesize(r[0], r[1], r[2], tmpdir), todo):
                done += 1
                prog.update(done)
        for chap_dir, lines in trans.items():
            _write_trans(chap_dir, lines)
        n_real = 0 if a.no_librivox else len(add_librivox(out, a.librivox_dir))
    except CorpusError as e:
        log.error("%s", e)
        return 1
    # Sanity: every file is 16 kHz mono and not silent.
    for part in ("train", "dev", "test"):
        for f in (out / part).rglob("*.flac"):
            info = sf.info(str(f))
            if info.samplerate != FS or info.channels != 1 or info.frames < FS // 4:
                log.error("%s: %d Hz, %d ch, %d samples: not a valid corpus file", f, info.samplerate,
                          info.channels, info.frames)
                return 1
    marker.write_text(signature + "\n")
    counts = {part: sum(1 for r in rows if r[0] == part) for part in CHAPTER}
    counts["test"] += n_real
    log.info("corpus ready in %s: %s utterances (%.1fs)", out, counts, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
