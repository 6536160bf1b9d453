"""Stage fingerprints: what a recipe stage's `.done` marker records, and whether it still holds.

    python -m xytok.bin.fingerprint check MARKER [--file PATH ...] [--stat PATH ...] [--opt NAME=VALUE ...]
    python -m xytok.bin.fingerprint write MARKER [--file PATH ...] [--stat PATH ...] [--opt NAME=VALUE ...]

egs/TEMPLATE/xytok.sh calls this for every stage: `write` when the stage finished, `check` before
running it again. The marker (JSON) records the stage's inputs:
  --file PATH   content hash + line count (the small Kaldi tables a stage reads: wav.scp, text,
                utt2spk, ...; configs; another stage's marker). A missing file is recorded as absent.
  --stat PATH   size + modification time only (large files such as checkpoints; audio is never hashed)
  --opt N=V     an option that shapes the output (fs, min_wav_duration, nbpe, training args, ...)

check exits 0 when MARKER records exactly these inputs; 1 when the stage must run, printing one
line saying why ("no marker", "data/train changed: 15 utterances, was 14", "--min_wav_duration
0.5, was 0.1"); 3 for an empty marker left by an xytok without fingerprints (the caller decides);
2 on usage errors. Stdlib only, so any python3 runs it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

VERSION = 1
# Files whose line count is the number of utterances of their data dir (in this order of preference).
_UTT_TABLES = ("utt2spk", "wav.scp", "text", "utt2num_samples", "feats.scp")


def _file_record(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    lines = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            lines += block.count(b"\n")
    return {"sha256": h.hexdigest(), "lines": lines}


def _stat_record(path: str) -> Optional[dict]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def current(files: Sequence[str], stats: Sequence[str], opts: Sequence[str]) -> dict:
    options: Dict[str, str] = {}
    for o in opts:
        name, sep, value = o.partition("=")
        if not sep or not name:
            raise ValueError(f"--opt {o!r}: expected NAME=VALUE")
        options[name] = value
    return {"version": VERSION,
            "files": {p: _file_record(p) for p in files},
            "stats": {p: _stat_record(p) for p in stats},
            "options": options}


def _utterances(names: Dict[str, Optional[dict]]) -> Optional[int]:
    for n in _UTT_TABLES:
        if names.get(n):
            return names[n]["lines"]
    return None


def differences(old: dict, new: dict) -> List[str]:
    """Human-readable reasons why `old` (recorded) differs from `new` (now); empty when equal."""
    reasons: List[str] = []
    if old.get("version") != new["version"]:
        return [f"marker format {old.get('version')}, this xytok writes {new['version']}"]
    # files, grouped by directory: "data/train changed: 15 utterances, was 14"
    groups: Dict[str, Dict[str, list]] = {}
    old_files, new_files = old.get("files", {}), new["files"]
    for p in sorted(set(old_files) | set(new_files)):
        o, n = old_files.get(p, "unrecorded"), new_files.get(p, "unrecorded")
        d, base = os.path.split(p)
        g = groups.setdefault(d, {"old": {}, "new": {}, "changed": []})
        g["old"][base] = o if isinstance(o, dict) else None
        g["new"][base] = n if isinstance(n, dict) else None
        if o != n:
            g["changed"].append(base)
    for d, g in groups.items():
        if not g["changed"]:
            continue
        parts = []
        for base in g["changed"]:
            o, n = g["old"][base], g["new"][base]
            if o is None and n is not None:
                parts.append(f"{base} now present")
            elif n is None and o is not None:
                parts.append(f"{base} now absent")
        n_old, n_new = _utterances(g["old"]), _utterances(g["new"])
        tables = any(b in _UTT_TABLES or b in ("spk2utt", "segments") for b in g["changed"])
        if tables and n_old is not None and n_new is not None and n_old != n_new:
            what = f"{n_new} utterances, was {n_old}"
        else:
            what = "different " + ", ".join(g["changed"])
        label = d or "."
        if len(g["changed"]) == 1 and not tables:
            label, what = os.path.join(d, g["changed"][0]), "different content"
        extra = f" ({'; '.join(parts)})" if parts else ""
        reasons.append(f"{label} changed: {what}{extra}")
    old_stats, new_stats = old.get("stats", {}), new["stats"]
    for p in sorted(set(old_stats) | set(new_stats)):
        if old_stats.get(p) != new_stats.get(p):
            reasons.append(f"{p} changed (size or modification time)")
    old_opts, new_opts = old.get("options", {}), new["options"]
    for name in sorted(set(old_opts) | set(new_opts)):
        o, n = old_opts.get(name), new_opts.get(name)
        if o != n:
            shown = lambda v: "(not recorded)" if v is None else (f"'{v}'" if v == "" or " " in v else v)  # noqa: E731
            if len(f"{o}{n}") > 120:  # a config's content hash, long args: just say it changed
                reasons.append(f"--{name} changed")
            else:
                reasons.append(f"--{name} {shown(n)}, was {shown(o)}")
    return reasons


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.fingerprint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["check", "write"])
    p.add_argument("marker", help="the stage's .done file")
    p.add_argument("--file", action="append", default=[], help="input whose content is hashed")
    p.add_argument("--stat", action="append", default=[], help="large input: size + mtime only")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help="an option of the stage")
    a = p.parse_args(argv)
    try:
        now = current(a.file, a.stat, a.opt)
    except ValueError as e:
        print(f"fingerprint: error: {e}", file=sys.stderr)
        return 2
    if a.action == "write":
        d = os.path.dirname(a.marker) or "."
        os.makedirs(d, exist_ok=True)
        tmp = f"{a.marker}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(now, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, a.marker)
        return 0
    if not os.path.isfile(a.marker):
        print("not done yet")
        return 1
    with open(a.marker, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        print(f"{a.marker} is an empty marker from an xytok without stage fingerprints (inputs not recorded)")
        return 3
    try:
        old = json.loads(text)
        if not isinstance(old, dict):
            raise ValueError("not an object")
    except ValueError:
        print(f"{a.marker} is not a fingerprint marker")
        return 1
    reasons = differences(old, now)
    if reasons:
        print("; ".join(reasons))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
