"""Kaldi data dirs from a Mozilla Common Voice release (one language), or extract a release tarball.

Layout read (the release's own):   <cv_dir>/<lang>/clips/<name>.mp3
                                   <cv_dir>/<lang>/{train,dev,test,validated,...}.tsv
`cv_dir` is the directory holding the language folders (an extracted cv-corpus-<version>/); a
directory holding one extracted cv-corpus-*/<lang>/ is accepted too. The tsv files are read by
header name, never by position (releases add, rename and reorder columns: accent -> accents,
sentence_id, variant, sentence_domain, ...); only `client_id`, `path` and `sentence` are used.
Quotes are data in these files (csv.QUOTE_NONE), as in the release's own tools.

Written per set (atomically; `LC_ALL=C` order):
    wav.scp   <utt> <absolute .mp3 path>   (48 kHz MP3; recipe stage 2 dumps 16 kHz)
    text      <utt> <sentence>             (as given, whitespace runs collapsed)
    utt2spk   <utt> <spk>                  spk = the first 16 hex digits of client_id (longer if two
    spk2utt                                 speakers share them); utt = <spk>-<clip name without .mp3>
Rows with an empty sentence or a clip that is missing (or empty) are dropped and counted.

    python -m xytok.bin.commonvoice_data prepare --cv_dir $COMMONVOICE --lang de --out_dir data \\
        --train_set train_de --dev_set dev_de --test_set test_de
    python -m xytok.bin.commonvoice_data extract --archive cv-corpus-17.0-2024-03-15-de.tar.gz \\
        --dest downloads --lang de
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from xytok.bin.librispeech_data import DataPrepError, write_data_dir
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.commonvoice_data")

REQUIRED_COLUMNS = ("client_id", "path", "sentence")
SPLITS = ("train", "dev", "test")
SPK_DIGITS = 16  # client_id is a 128-hex-digit hash; 16 keep ids short and (checked) unique
DOWNLOAD_HINT = ("download it from https://commonvoice.mozilla.org/datasets (account needed) and set "
                 "COMMONVOICE (db.sh or the environment) to the extracted cv-corpus-<version>/ folder, "
                 "or pass the release tarball with --local_data_opts \"--archive PATH\"")
# A language code as Common Voice names its folders: en, de, zh-CN, sv-SE, cy, ...
LANG_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]+)*$")


class Row(NamedTuple):
    clip: str        # file name in clips/
    client_id: str
    text: str
    where: str       # "<tsv>:<line>", for messages


def set_suffix(lang: str) -> str:
    """The set-name suffix of a language: zh-CN -> zh_CN (train_zh_CN, ...)."""
    return lang.replace("-", "_")


def find_lang_dir(cv_dir: Path, lang: str) -> Path:
    """<cv_dir>/<lang>, or <cv_dir>/cv-corpus-*/<lang> when exactly one release is there."""
    if not LANG_RE.match(lang):
        raise DataPrepError(f"--lang '{lang}': not a Common Voice language code (e.g. en, de, zh-CN)")
    direct = cv_dir / lang
    if (direct / "clips").is_dir() or any(direct.glob("*.tsv")):
        return direct
    nested = sorted(p for p in cv_dir.glob(f"cv-corpus-*/{lang}") if p.is_dir())
    if len(nested) == 1:
        return nested[0]
    if len(nested) > 1:
        raise DataPrepError(f"{cv_dir}: several releases hold '{lang}' ({', '.join(str(p) for p in nested)}); "
                            "set COMMONVOICE to the one to use")
    have = sorted(p.name for p in cv_dir.iterdir() if p.is_dir()) if cv_dir.is_dir() else []
    where = f"{cv_dir} holds {', '.join(have[:20]) or 'no folders'}" if cv_dir.is_dir() else f"{cv_dir} does not exist"
    raise DataPrepError(f"Common Voice '{lang}' not found: no {direct}/ with clips/ and *.tsv ({where}); "
                        + DOWNLOAD_HINT)


def read_tsv(path: Path) -> List[Row]:
    """The rows of a release tsv, columns found by header name."""
    if not path.is_file():
        raise DataPrepError(f"{path}: not found (a Common Voice release has train.tsv, dev.tsv, test.tsv)")
    rows: List[Row] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataPrepError(f"{path}: empty file (no header row)")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataPrepError(f"{path}: header lacks column(s) {', '.join(missing)} (header: {' '.join(header)})")
        col = {c: header.index(c) for c in REQUIRED_COLUMNS}
        for n, fields in enumerate(reader, 2):
            if not fields or fields == [""]:
                continue
            if len(fields) != len(header):
                raise DataPrepError(f"{path}:{n}: {len(fields)} tab-separated fields, the header has {len(header)}")
            rows.append(Row(fields[col["path"]].strip(), fields[col["client_id"]].strip(),
                            " ".join(fields[col["sentence"]].split()), f"{path}:{n}"))
    return rows


def speaker_ids(client_ids: Set[str]) -> Dict[str, str]:
    """client_id -> speaker id: its first SPK_DIGITS characters, or more when two would coincide."""
    digits = SPK_DIGITS
    while True:
        short = {c: c[:digits] for c in client_ids}
        if len(set(short.values())) == len(short):
            return short
        if digits >= max(map(len, client_ids)):
            raise DataPrepError("duplicate client_id values after prefixing (should not happen)")
        digits *= 2


def _check_audio(path: str) -> Optional[str]:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile raises several types
        return f"unreadable ({e})"
    return "0 samples" if info.frames <= 0 else None


def prepare(cv_dir: Path, lang: str, out_dir: Path, sets: Tuple[str, str, str], train_tsv: str = "train",
            check_audio: bool = False, nj: int = 1) -> Dict[str, int]:
    """Read train/dev/test (train: `train_tsv`), drop unusable rows, write the three data dirs."""
    lang_dir = find_lang_dir(Path(cv_dir), lang)
    clips_dir = lang_dir / "clips"
    if not clips_dir.is_dir():
        raise DataPrepError(f"{clips_dir}: not found (the release's MP3 folder); {DOWNLOAD_HINT}")
    log.info("Common Voice '%s': %s (train from %s.tsv)", lang, lang_dir, train_tsv)
    t0 = time.time()
    present = {e.name for e in os.scandir(clips_dir)}
    log.info("%s: %d files listed (%.1fs)", clips_dir, len(present), time.time() - t0)

    split_rows = {s: read_tsv(lang_dir / f"{train_tsv if s == 'train' else s}.tsv") for s in SPLITS}
    # A clip in two of the splits would be trained and tested on: the release never does that.
    owner: Dict[str, str] = {}
    held_spk: Set[str] = set()
    for s in ("dev", "test"):
        for r in split_rows[s]:
            if r.clip in owner:
                raise DataPrepError(f"{r.where}: clip {r.clip} listed twice (also {owner[r.clip]})")
            owner[r.clip] = r.where
            held_spk.add(r.client_id)
    counts: Dict[str, Counter] = {s: Counter() for s in SPLITS}
    if train_tsv != "train":  # e.g. validated.tsv: a superset of dev and test, so take those out
        kept = []
        for r in split_rows["train"]:
            if r.clip in owner:
                counts["train"]["in dev/test"] += 1
            elif r.client_id in held_spk:
                counts["train"]["dev/test speaker"] += 1
            else:
                kept.append(r)
        split_rows["train"] = kept
    else:
        for r in split_rows["train"]:
            if r.clip in owner:
                raise DataPrepError(f"{r.where}: clip {r.clip} is also in {owner[r.clip]}")

    usable: Dict[str, List[Row]] = {}
    for s in SPLITS:
        seen: Dict[str, str] = {}
        out: List[Row] = []
        prog = ProgressLog(len(split_rows[s]), f"{s} ({lang})", unit="rows", logger=log)
        for i, r in enumerate(split_rows[s], 1):
            if r.clip in seen:
                raise DataPrepError(f"{r.where}: clip {r.clip} listed twice (also {seen[r.clip]})")
            seen[r.clip] = r.where
            if not r.client_id:
                raise DataPrepError(f"{r.where}: empty client_id for clip {r.clip}")
            if not r.clip or "/" in r.clip or any(c.isspace() for c in r.clip):
                raise DataPrepError(f"{r.where}: bad clip name '{r.clip}' (a file name in clips/ without spaces)")
            if not r.text:
                counts[s]["empty sentence"] += 1
            elif r.clip not in present:
                counts[s]["missing clip"] += 1
            elif os.path.getsize(clips_dir / r.clip) == 0:
                counts[s]["empty clip file"] += 1
            else:
                out.append(r)
            prog.update(i)
        usable[s] = out

    if check_audio:
        paths = sorted({str(clips_dir / r.clip) for rows in usable.values() for r in rows})
        bad = _find_bad_audio(paths, nj)
        for s in SPLITS:
            n0 = len(usable[s])
            usable[s] = [r for r in usable[s] if str(clips_dir / r.clip) not in bad]
            if len(usable[s]) < n0:
                counts[s]["unreadable clip"] += n0 - len(usable[s])
        for p, why in sorted(bad.items())[:5]:
            log.warning("dropped %s: %s", p, why)

    spk = speaker_ids({r.client_id for rows in usable.values() for r in rows})
    clips_abs = clips_dir.resolve()
    if any(c.isspace() for c in str(clips_abs)):
        raise DataPrepError(f"{clips_abs}: path contains whitespace (not allowed in wav.scp); move the corpus")
    sizes = {}
    for s, name in zip(SPLITS, sets):
        rows = usable[s]
        dropped = ", ".join(f"{v} {k}" for k, v in sorted(counts[s].items())) or "none"
        if not rows:
            raise DataPrepError(f"{lang_dir / (train_tsv if s == 'train' else s)}.tsv: no usable row "
                                f"(dropped: {dropped})")
        table = sorted(((f"{spk[r.client_id]}-{Path(r.clip).stem}", str(clips_abs / r.clip), r.text, spk[r.client_id])
                        for r in rows), key=lambda row: row[0].encode())
        write_data_dir(table, Path(out_dir) / name)
        sizes[name] = len(table)
        log.info("%s: %d utterances, %d speakers -> %s; dropped: %s", name, len(table),
                 len({row[3] for row in table}), Path(out_dir) / name, dropped)
    return sizes


def _find_bad_audio(paths: List[str], nj: int) -> Dict[str, str]:
    import multiprocessing

    prog = ProgressLog(len(paths), "audio check", unit="clips", logger=log)
    bad: Dict[str, str] = {}
    with multiprocessing.get_context("fork").Pool(max(1, nj)) as pool:
        for i, (p, why) in enumerate(zip(paths, pool.imap(_check_audio, paths, chunksize=64)), 1):
            if why:
                bad[p] = why
            prog.update(i)
    return bad


def extract(archive: Path, dest: Path, lang: str) -> Path:
    """Extract a release tarball (cv-corpus-<ver>-<lang>.tar.gz -> cv-corpus-<ver>/<lang>/) into
    dest once (a marker records the archive); returns the cv-corpus-<ver>/ folder."""
    if not archive.is_file():
        raise DataPrepError(f"--archive {archive}: not found; {DOWNLOAD_HINT}")
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / f".{archive.name}.extracted"
    stamp = f"{archive.resolve()} {archive.stat().st_size}\n"
    if not (marker.is_file() and marker.read_text() == stamp):
        log.info("extracting %s into %s", archive, dest)
        t0 = time.time()
        n = 0
        try:
            with tarfile.open(archive) as tf:
                for member in tf:
                    if not (member.isfile() or member.isdir()):
                        continue  # links and devices have no place in a release
                    name = Path(member.name)
                    if name.is_absolute() or ".." in name.parts:
                        raise DataPrepError(f"{archive}: unsafe member path '{member.name}'")
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: refuse odd modes too
                        tf.extract(member, dest, filter="data")
                    else:
                        tf.extract(member, dest)
                    n += 1
                    if n % 20000 == 0:
                        log.info("  %d files (%.0fs)", n, time.time() - t0)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataPrepError(f"{archive}: cannot extract ({e}); a truncated download? fetch it again") from e
        marker.write_text(stamp)
        log.info("extracted %d entries (%.0fs)", n, time.time() - t0)
    else:
        log.info("%s: already extracted into %s (%s)", archive, dest, marker)
    found = sorted(p.parent for p in dest.glob(f"*/{lang}") if (p / "clips").is_dir())
    if not found:
        raise DataPrepError(f"{archive}: extracted into {dest}, but no <release>/{lang}/clips/ is there "
                            f"(is this the '{lang}' archive?)")
    if len(found) > 1:
        raise DataPrepError(f"{dest}: several releases hold '{lang}' ({', '.join(map(str, found))}); "
                            "extract into an empty folder")
    return found[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.commonvoice_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="write the train/dev/test data dirs of one language",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pp.add_argument("--cv_dir", required=True, help="holds the release's <lang>/ folders (cv-corpus-<version>/)")
    pp.add_argument("--lang", default="en", help="Common Voice language code (en, de, zh-CN, ...)")
    pp.add_argument("--out_dir", default="data", help="data dirs go to OUT_DIR/<set>")
    pp.add_argument("--train_set", default=None, help="default train_<lang> (zh-CN -> train_zh_CN)")
    pp.add_argument("--dev_set", default=None, help="default dev_<lang>")
    pp.add_argument("--test_set", default=None, help="default test_<lang>")
    pp.add_argument("--train_tsv", default="train", choices=("train", "validated"),
                    help="validated: every validated clip except dev/test clips and speakers")
    pp.add_argument("--check_audio", action="store_true", help="open every clip; unreadable ones are dropped")
    pp.add_argument("--nj", type=int, default=4, help="processes for --check_audio")
    ep = sub.add_parser("extract", help="extract a release tarball once; prints the cv-corpus-<version>/ folder",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ep.add_argument("--archive", required=True, help="cv-corpus-<version>-<lang>.tar.gz")
    ep.add_argument("--dest", required=True, help="extract into this folder")
    ep.add_argument("--lang", default="en", help="the language the archive holds")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [commonvoice_data] %(message)s")
    t0 = time.time()
    try:
        if a.cmd == "extract":
            print(extract(Path(a.archive), Path(a.dest), a.lang))
        else:
            suffix = set_suffix(a.lang)
            sets = (a.train_set or f"train_{suffix}", a.dev_set or f"dev_{suffix}", a.test_set or f"test_{suffix}")
            if len(set(sets)) != 3:
                raise DataPrepError(f"--train_set/--dev_set/--test_set must differ: {sets}")
            prepare(Path(a.cv_dir), a.lang, Path(a.out_dir), sets, a.train_tsv, a.check_audio, a.nj)
    except DataPrepError as e:
        log.error("%s", e)
        return 1
    log.info("done (%.1fs)", time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
