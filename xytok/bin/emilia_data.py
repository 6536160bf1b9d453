"""Kaldi data dirs (train/dev/test) from the Emilia corpus, in either of its two layouts.

Layouts under --emilia_dir (detected; both may be present for different languages):
  Hugging Face (amphion/Emilia-Dataset, WebDataset tar shards):
      Emilia/<LANG>/<LANG>-B000000.tar, Emilia-YODAS/<LANG>/<LANG>-B000000.tar, ...
      (or <LANG>/<LANG>-B000000.tar directly under --emilia_dir, as in the first HF revision)
      each shard holds <key>.mp3 + <key>.json pairs; the audio is used in place: wav.scp points at
      the member's bytes as `/abs/shard.tar:OFFSET:SIZE` (xytok.audio reads and decodes them), so
      nothing is extracted or re-encoded.
  original OpenEmilia release:
      <LANG>/<LANG>_B00000.jsonl (one JSON per line) + the mp3 tree the `wav` field points into,
      relative to <LANG>/ (e.g. EN_B00000/EN_B00000_S00000/mp3/EN_B00000_S00000_W000000.mp3).
Metadata fields used: id, text, duration (s), speaker, dnsmos (with --min_dnsmos), wav (original
layout); `language` is not needed (the folder names the language).

Written to --out_dir/<set> for the train, dev and test sets (each built in a temp dir, then renamed):
    wav.scp  text  utt2spk  spk2utt  utt2dur (json duration)  utt2num_samples (round(duration * 16000),
    the 16 kHz length stage 2 will produce)  utt2lang,
all sorted in C (byte) order. Utterance ids start with the speaker id (Kaldi convention): Emilia ids
(EN_B00000_S00000_W000000, speaker EN_B00000_S00000) already do; others (Emilia-YODAS) become
<speaker>-<id>. Dev and test are whole speakers held out from training (--dev_spk / --test_spk per
language), drawn from the first shards of each language so that downloading more shards later
does not move them. Bad JSON, missing fields, a JSON without its mp3 (or the reverse) and duplicate
ids are errors that name the file.

    python -m xytok.bin.emilia_data prepare --emilia_dir $EMILIA --out_dir data --langs "en zh"
    python -m xytok.bin.emilia_data download --emilia_dir $EMILIA --langs "en zh" --max_shards_per_lang 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from xytok.audio import tar_member_entry
from xytok.data.datadir import atomic_directory, utt2spk_to_spk2utt, write_table
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.emilia_data")

LANGS = ("EN", "ZH", "DE", "FR", "JA", "KO")
SUBSETS = ("Emilia", "Emilia-YODAS")
REPO_ID = "amphion/Emilia-Dataset"
FS = 16000
GATED_HELP = (f"the dataset is gated: accept its terms at https://huggingface.co/datasets/{REPO_ID} "
              "with your account, then log in here (`huggingface-cli login`, or set HF_TOKEN)")


class DataPrepError(RuntimeError):
    """Bad corpus input or options; the message names the file and the problem."""


@dataclass(frozen=True)
class Shard:
    lang: str
    kind: str      # "tar" (HF) or "jsonl" (original)
    path: str      # absolute
    source: str    # "Emilia", "Emilia-YODAS" or "original"


class Row(NamedTuple):
    utt: str
    spk: str
    wav: str
    dur: float
    text: str
    lang: str
    src: int       # index of the shard it came from (named in error messages; rows stay small)


# ----------------------------------------------------------------------------------------------
# Finding the shards


def parse_langs(langs: Optional[str | Sequence[str]]) -> Optional[List[str]]:
    if not langs:
        return None
    items = langs.replace(",", " ").split() if isinstance(langs, str) else list(langs)
    out = []
    for lang in items:
        up = lang.upper()
        if up not in LANGS:
            raise DataPrepError(f"--langs: unknown Emilia language '{lang}' (known: {' '.join(LANGS)})")
        if up not in out:
            out.append(up)
    return out or None


def find_shards(root: Path, langs: Optional[List[str]] = None) -> Dict[str, List[Shard]]:
    """Shards per language, in a stable order: Emilia, then Emilia-YODAS, then the original layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataPrepError(f"{root}: Emilia directory not found (set EMILIA in db.sh or the environment)")
    found: Dict[str, List[Shard]] = {}
    for lang in LANGS:
        shards: List[Shard] = []
        for src in SUBSETS:
            d = root / src / lang
            if d.is_dir():
                shards += [Shard(lang, "tar", str(p.resolve()), src) for p in _listed(d, ".tar")]
        d = root / lang
        if d.is_dir():
            shards += [Shard(lang, "tar", str(p.resolve()), "Emilia") for p in _listed(d, ".tar")]
            shards += [Shard(lang, "jsonl", str(p.resolve()), "original") for p in _listed(d, ".jsonl")]
        if shards:
            found[lang] = shards
    if langs:
        missing = [lang for lang in langs if lang not in found]
        if missing:
            raise DataPrepError(f"{root}: no Emilia data for {' '.join(missing)} (looked for "
                                + ", ".join(f"Emilia/{m}/*.tar, Emilia-YODAS/{m}/*.tar, {m}/*.jsonl" for m in missing)
                                + "; present: " + (" ".join(found) or "none") + ")")
        found = {lang: found[lang] for lang in langs}
    if not found:
        raise DataPrepError(f"{root}: no Emilia data found (expected Emilia/<LANG>/<LANG>-B*.tar, "
                            f"Emilia-YODAS/<LANG>/*.tar or <LANG>/<LANG>_B*.jsonl, LANG in {' '.join(LANGS)})")
    return found


def _listed(d: Path, ext: str) -> List[Path]:
    return sorted((p for p in d.iterdir() if p.name.endswith(ext) and not p.name.startswith(".")
                   and p.is_file()), key=lambda p: p.name)


# ----------------------------------------------------------------------------------------------
# Reading one shard


@dataclass
class Filters:
    min_dnsmos: Optional[float] = None
    min_duration: float = 0.0
    max_duration: float = math.inf


def _row(meta, where: str, wav: str, flt: Filters, counts: Dict[str, int], lang: str, src: int) -> Optional[Row]:
    """The row for one metadata record, or None when a filter drops it (counted)."""
    if not isinstance(meta, dict):
        raise DataPrepError(f"{where}: metadata is not a JSON object")
    need = ["id", "text", "duration", "speaker"] + (["dnsmos"] if flt.min_dnsmos is not None else [])
    missing = [k for k in need if k not in meta]
    if missing:
        raise DataPrepError(f"{where}: missing field(s) {', '.join(missing)} in the metadata "
                            f"(has: {', '.join(sorted(meta))})")
    uid, spk = str(meta["id"]).strip(), str(meta["speaker"]).strip()
    for name, value in (("id", uid), ("speaker", spk)):
        if not value or any(c.isspace() for c in value):
            raise DataPrepError(f"{where}: field '{name}' is empty or contains whitespace: {value!r}")
    try:
        dur = float(meta["duration"])
        dnsmos = float(meta["dnsmos"]) if flt.min_dnsmos is not None else None
    except (TypeError, ValueError) as e:
        raise DataPrepError(f"{where}: 'duration'/'dnsmos' is not a number ({e})") from None
    if not dur > 0:
        raise DataPrepError(f"{where}: duration must be > 0, got {meta['duration']!r}")
    text = " ".join(str(meta["text"] or "").split())
    if not text:
        counts["empty text"] += 1
        return None
    if dnsmos is not None and dnsmos < flt.min_dnsmos:
        counts["dnsmos"] += 1
        return None
    if dur < flt.min_duration or dur > flt.max_duration:
        counts["duration"] += 1
        return None
    if any(c.isspace() for c in wav):
        raise DataPrepError(f"{where}: audio path contains whitespace (not allowed in wav.scp): {wav}")
    utt = uid if uid.startswith(spk) else f"{spk}-{uid}"
    return Row(utt, spk, wav, dur, text, lang, src)


def _split_key(name: str) -> Tuple[str, str]:
    """WebDataset key and extension: `dir/EN_B0_S0_W0.mp3` -> (`dir/EN_B0_S0_W0`, `mp3`)."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def scan_tar(path: str, flt: Filters, counts: Dict[str, int], lang: str = "", src: int = 0) -> List[Row]:
    """Rows of one HF shard, reading only tar headers and the small .json members."""
    rows: List[Row] = []
    pending: Dict[str, dict] = {}  # key -> {"json": .., "mp3": (offset, size)}; small: pairs are adjacent in practice
    try:
        tf = tarfile.open(path, "r:")  # uncompressed only: offsets must be byte offsets in the file
    except (tarfile.TarError, OSError) as e:
        raise DataPrepError(f"{path}: cannot open as an uncompressed tar ({e}); re-download the shard") from None
    fsize = os.path.getsize(path)
    with tf:
        try:
            for ti in tf:
                if not ti.isfile():
                    continue
                key, ext = _split_key(ti.name)
                if ext == "json":
                    where = f"{path}:{ti.name}"
                    try:
                        meta = json.loads(tf.extractfile(ti).read().decode("utf-8"))
                    except (ValueError, UnicodeDecodeError) as e:
                        raise DataPrepError(f"{where}: bad JSON ({e})") from None
                    pending.setdefault(key, {})["json"] = (meta, where)
                elif ext == "mp3":
                    if ti.offset_data + ti.size > fsize:  # tarfile stops quietly at a cut-off end
                        raise DataPrepError(f"{path}: truncated: member {ti.name} ends at byte "
                                            f"{ti.offset_data + ti.size} of a {fsize}-byte file; re-download the shard")
                    pending.setdefault(key, {})["mp3"] = (ti.offset_data, ti.size)
                else:
                    continue
                entry = pending[key]
                if "json" in entry and "mp3" in entry:
                    del pending[key]
                    (meta, where), (off, size) = entry["json"], entry["mp3"]
                    if size == 0:
                        raise DataPrepError(f"{path}:{key}.mp3: empty audio member (0 bytes)")
                    r = _row(meta, where, tar_member_entry(path, off, size), flt, counts, lang, src)
                    if r:
                        rows.append(r)
        except tarfile.TarError as e:
            raise DataPrepError(f"{path}: corrupt or truncated tar ({e}); re-download the shard") from None
    if pending:
        key, entry = sorted(pending.items())[0]
        has, lacks = ("json", "mp3") if "json" in entry else ("mp3", "json")
        raise DataPrepError(f"{path}: {len(pending)} member(s) without a pair, e.g. '{key}.{has}' has no "
                            f"'{key}.{lacks}' (truncated shard?)")
    return rows


def scan_jsonl(path: str, flt: Filters, counts: Dict[str, int], lang: str = "", src: int = 0) -> List[Row]:
    """Rows of one original-layout jsonl; `wav` is relative to the jsonl's <LANG>/ folder."""
    base = Path(path).parent
    rows: List[Row] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                meta = json.loads(line)
            except ValueError as e:
                raise DataPrepError(f"{where}: bad JSON ({e})") from None
            if isinstance(meta, dict) and "wav" not in meta:
                raise DataPrepError(f"{where}: missing field wav in the metadata (has: {', '.join(sorted(meta))})")
            wav = base / str(meta["wav"]) if isinstance(meta, dict) else base
            r = _row(meta, where, str(wav.resolve()), flt, counts, lang, src)
            if r is None:
                continue
            if not wav.is_file():
                raise DataPrepError(f"{where}: audio file not found: {wav} (utterance {meta['id']})")
            rows.append(r)
    return rows


def scan_shard(args: Tuple[Shard, int, Filters]) -> Tuple[List[Row], Dict[str, int]]:
    shard, src, flt = args
    counts = {"empty text": 0, "dnsmos": 0, "duration": 0}
    rows = (scan_tar if shard.kind == "tar" else scan_jsonl)(shard.path, flt, counts, shard.lang, src)
    return rows, counts


# ----------------------------------------------------------------------------------------------
# Splitting and writing


def _rank(spk: str, seed: int) -> str:
    return hashlib.md5(f"{seed}:{spk}".encode()).hexdigest()


def held_out_speakers(spk_first_shard: Dict[str, int], n_dev: int, n_test: int, seed: int,
                      lang: str) -> Tuple[set, set]:
    """(dev, test) speakers of one language: from the earliest shards that hold enough speakers,
    the n_test then n_dev speakers with the lowest seeded hash (stable when shards are added)."""
    need = n_dev + n_test
    if need == 0:
        return set(), set()
    if len(spk_first_shard) <= need:
        raise DataPrepError(f"{lang}: {len(spk_first_shard)} speaker(s) left after filtering, but dev + test "
                            f"hold out {n_dev} + {n_test}; training needs at least one more "
                            f"(lower --dev_spk/--test_spk or add shards)")
    by_shard: Dict[int, List[str]] = {}
    for spk, i in spk_first_shard.items():
        by_shard.setdefault(i, []).append(spk)
    pool: List[str] = []
    for i in sorted(by_shard):
        pool += by_shard[i]
        if len(pool) >= need:
            break
    pool.sort(key=lambda s: _rank(s, seed))
    return set(pool[n_test:need]), set(pool[:n_test])


def write_data_dir(rows: Sequence[Row], out: Path) -> None:
    """rows sorted by utterance id (code-point order of str = byte order of its UTF-8)."""
    with atomic_directory(out) as tmp_dir:
        tmp = Path(tmp_dir)
        # One table at a time: only the rows (the output itself) stay in memory throughout.
        for name, value in (("wav.scp", lambda r: r.wav), ("text", lambda r: r.text), ("utt2spk", lambda r: r.spk),
                            ("utt2dur", lambda r: f"{r.dur:.3f}"),
                            ("utt2num_samples", lambda r: str(max(1, round(r.dur * FS)))),
                            ("utt2lang", lambda r: r.lang)):
            write_table(str(tmp / name), {r.utt: value(r) for r in rows})
        write_table(str(tmp / "spk2utt"), utt2spk_to_spk2utt({r.utt: r.spk for r in rows}))


def prepare(emilia_dir: Path, out_dir: Path, langs: Optional[str | Sequence[str]] = None, flt: Filters = Filters(),
            n_dev: int = 10, n_test: int = 10, seed: int = 0, sets: Tuple[str, str, str] = ("train", "dev", "test"),
            nj: int = 1) -> Dict[str, int]:
    """Scan the shards, filter, split by speaker and write the three data dirs; returns set sizes."""
    shards = find_shards(Path(emilia_dir), parse_langs(langs))
    flat = [s for lang in shards for s in shards[lang]]
    log.info("%s: %d shard(s): %s", emilia_dir, len(flat),
             ", ".join(f"{lang} {len(v)} ({'/'.join(sorted({s.source for s in v}))})" for lang, v in shards.items()))
    rows: List[Row] = []
    held: Dict[str, Tuple[set, set]] = {}
    prog = ProgressLog(len(flat), "scan", unit="shards", logger=log)
    pool = multiprocessing.get_context("fork").Pool(nj) if nj > 1 and len(flat) > 1 else None
    jobs = [(s, i, flt) for i, s in enumerate(flat)]
    results: Iterable = pool.imap(scan_shard, jobs) if pool else map(scan_shard, jobs)
    done = 0
    try:
        # Shards come back in order, grouped by language: choose each language's held-out speakers
        # once all its shards are read.
        for lang in shards:
            first: Dict[str, int] = {}  # speaker -> first shard (of this language) holding it
            counts = {"empty text": 0, "dnsmos": 0, "duration": 0}
            n_rows = 0
            for i in range(len(shards[lang])):
                shard_rows, c = next(results)
                done += 1
                prog.update(done, extra=f" ({lang})")
                for k in counts:
                    counts[k] += c[k]
                for r in shard_rows:
                    first.setdefault(r.spk, i)
                rows += shard_rows
                n_rows += len(shard_rows)
            if not n_rows:
                raise DataPrepError(f"{lang}: no utterance left after filtering "
                                    f"({', '.join(f'{v} dropped for {k}' for k, v in counts.items())})")
            held[lang] = held_out_speakers(first, n_dev, n_test, seed, lang)
            log.info("%s: %d utterances, %d speakers (%d dev, %d test held out); dropped: %s", lang, n_rows,
                     len(first), len(held[lang][0]), len(held[lang][1]),
                     ", ".join(f"{v} {k}" for k, v in counts.items()))
    finally:
        if pool:
            pool.terminate()
    rows.sort()  # by utterance id; equal ids end up adjacent
    for a, b in zip(rows, rows[1:]):
        if a.utt == b.utt:
            i, j = sorted((a.src, b.src))
            where = f"twice in {flat[i].path}" if i == j else f"in {flat[i].path} and {flat[j].path}"
            raise DataPrepError(f"duplicate utterance id '{a.utt}': {where}")
    sizes = {}
    for k, name in enumerate(sets):
        part = [r for r in rows if _set_of(r, held) == k]
        if not part:
            raise DataPrepError(f"set '{name}' would be empty (--dev_spk {n_dev} --test_spk {n_test})")
        write_data_dir(part, Path(out_dir) / name)
        sizes[name] = len(part)
        log.info("%s: %d utterances, %d speakers, %.2f h -> %s", name, len(part), len({r.spk for r in part}),
                 sum(r.dur for r in part) / 3600, Path(out_dir) / name)
        del part
    return sizes


def _set_of(r: Row, held: Dict[str, Tuple[set, set]]) -> int:
    """0 train, 1 dev, 2 test."""
    dev, test = held[r.lang]
    return 2 if r.spk in test else 1 if r.spk in dev else 0


# ----------------------------------------------------------------------------------------------
# Download (huggingface_hub)

_SHARD_RE = re.compile(r"^(?P<src>Emilia|Emilia-YODAS)/(?P<lang>[A-Z]{2})/(?P=lang)-B\d+\.tar$")


def select_shards(repo_files: Iterable[str], langs: Sequence[str], subsets: Sequence[str],
                  max_shards_per_lang: Optional[int] = None) -> List[str]:
    """Repo paths of the wanted shards: per subset and language, the first N in name order."""
    groups: Dict[Tuple[str, str], List[str]] = {}
    for f in repo_files:
        m = _SHARD_RE.match(f)
        if m and m.group("lang") in langs and m.group("src") in subsets:
            groups.setdefault((m.group("src"), m.group("lang")), []).append(f)
    out: List[str] = []
    for key in sorted(groups):
        files = sorted(groups[key])
        out += files[:max_shards_per_lang] if max_shards_per_lang else files
    return out


def download(emilia_dir: Path, langs: Sequence[str], subsets: Sequence[str] = ("Emilia",),
             max_shards_per_lang: Optional[int] = None, revision: Optional[str] = None,
             list_files: Optional[Callable[[], List[str]]] = None,
             fetch: Optional[Callable[[str], str]] = None) -> List[str]:
    """Fetch the missing shards into emilia_dir (repo layout kept: Emilia/EN/EN-B000000.tar).

    A shard whose final file exists is complete (huggingface_hub moves a file into place only when
    it is whole) and is not fetched again; an interrupted one resumes from its .incomplete part.
    `list_files` / `fetch` replace the hub calls (tests). Returns the repo paths fetched."""
    emilia_dir = Path(emilia_dir)
    langs = parse_langs(langs) or []
    for s in subsets:
        if s not in SUBSETS:
            raise DataPrepError(f"--subsets: unknown subset '{s}' (known: {' '.join(SUBSETS)})")
    if list_files is None or fetch is None:
        try:
            from huggingface_hub import HfApi, hf_hub_download
        except ImportError:
            raise DataPrepError("--download true needs huggingface_hub: pip install -e '.[hf]'") from None
        if list_files is None:
            def list_files():
                return HfApi().list_repo_files(REPO_ID, repo_type="dataset", revision=revision)
        if fetch is None:
            def fetch(name):
                return hf_hub_download(repo_id=REPO_ID, repo_type="dataset", filename=name,
                                       revision=revision, local_dir=str(emilia_dir))
    try:
        wanted = select_shards(list_files(), langs, subsets, max_shards_per_lang)
    except DataPrepError:
        raise
    except Exception as e:  # hub errors (gated, auth, network) carry their own class names
        raise DataPrepError(f"cannot list {REPO_ID}: {type(e).__name__}: {e}\n  {GATED_HELP}") from None
    if not wanted:
        raise DataPrepError(f"{REPO_ID}: no shards for languages {' '.join(langs)} in {' '.join(subsets)}")
    todo = [f for f in wanted if not (emilia_dir / f).is_file()]
    log.info("%d shard(s) wanted, %d already present, %d to fetch into %s",
             len(wanted), len(wanted) - len(todo), len(todo), emilia_dir)
    emilia_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(todo, 1):
        t0 = time.time()
        try:
            fetch(name)
        except Exception as e:
            raise DataPrepError(f"{REPO_ID}/{name}: download failed: {type(e).__name__}: {e}\n  {GATED_HELP}; "
                                f"re-running resumes") from None
        if not (emilia_dir / name).is_file():
            raise DataPrepError(f"{REPO_ID}/{name}: download reported success but {emilia_dir / name} is missing")
        log.info("[%d/%d] %s (%.1f MB, %.0fs)", i, len(todo), name,
                 (emilia_dir / name).stat().st_size / 1e6, time.time() - t0)
    return todo


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.emilia_data",
                                description="Emilia (HF tar shards or original jsonl layout) -> Kaldi "
                                            "train/dev/test data dirs; or download shards from the hub.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="write the data dirs", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pp.add_argument("--emilia_dir", required=True,
                    help="holds Emilia/ and/or Emilia-YODAS/ (HF layout) or the <LANG>/ folders (original)")
    pp.add_argument("--out_dir", default="data", help="data dirs go to OUT_DIR/<set>")
    pp.add_argument("--langs", default="", help="e.g. 'en zh' (case-insensitive); empty = all languages present")
    pp.add_argument("--min_dnsmos", type=float, default=None, help="drop utterances with a lower DNSMOS")
    pp.add_argument("--min_duration", type=float, default=0.0, help="seconds (json duration); shorter are dropped")
    pp.add_argument("--max_duration", type=float, default=30.0, help="seconds; longer are dropped")
    pp.add_argument("--dev_spk", type=int, default=10, help="speakers per language held out for dev")
    pp.add_argument("--test_spk", type=int, default=10, help="speakers per language held out for test")
    pp.add_argument("--seed", type=int, default=0, help="which speakers are held out")
    pp.add_argument("--train_set", default="train")
    pp.add_argument("--dev_set", default="dev")
    pp.add_argument("--test_set", default="test")
    pp.add_argument("--nj", type=int, default=1, help="shards scanned in parallel")
    dp = sub.add_parser("download", help=f"fetch missing shards of {REPO_ID} (gated: needs `huggingface-cli login`)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    dp.add_argument("--emilia_dir", required=True, help="shards go to EMILIA_DIR/<subset>/<LANG>/")
    dp.add_argument("--langs", required=True, help="e.g. 'en zh'")
    dp.add_argument("--subsets", default="Emilia", help="'Emilia', 'Emilia-YODAS' or both")
    dp.add_argument("--max_shards_per_lang", type=int, default=None,
                    help="at most this many shards per language and subset (the first ones); default all")
    dp.add_argument("--revision", default=None, help="dataset revision (commit) to download")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [emilia_data] %(message)s")
    t0 = time.time()
    try:
        if a.cmd == "download":
            langs = parse_langs(a.langs)
            if not langs:
                raise DataPrepError("download: --langs is empty")
            download(Path(a.emilia_dir), langs, a.subsets.replace(",", " ").split(), a.max_shards_per_lang,
                     a.revision)
        else:
            for k in ("dev_spk", "test_spk"):
                if getattr(a, k) < 0:
                    raise DataPrepError(f"--{k} must be >= 0")
            if a.min_duration > a.max_duration:
                raise DataPrepError(f"--min_duration {a.min_duration} > --max_duration {a.max_duration}")
            sets = (a.train_set, a.dev_set, a.test_set)
            if len(set(sets)) != 3:
                raise DataPrepError(f"--train_set/--dev_set/--test_set must differ: {sets}")
            prepare(Path(a.emilia_dir), Path(a.out_dir), parse_langs(a.langs),
                    Filters(a.min_dnsmos, a.min_duration, a.max_duration), a.dev_spk, a.test_spk, a.seed, sets,
                    max(1, a.nj))
    except DataPrepError as e:
        log.error("%s", e)
        return 1
    log.info("done (%.1fs)", time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
