"""Data-dir tools (the command line behind the utils/*.sh|*.pl wrappers) over xytok.data.datadir.

    python -m xytok.bin.datadir {validate,check-audio,fix,split,split-scp,filter-duration,subset,copy,
                                 combine,utt2spk-to-spk2utt,spk2utt-to-utt2spk,filter-scp} ... [--help]

Stdlib only (as xytok.data.datadir), so the wrappers run with any python3; only reading audio
(validate --check-audio, filter-duration without utt2num_samples) needs soundfile.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from functools import partial
from typing import Optional, Sequence

from xytok.data.datadir import (
    DataDir,
    DataDirError,
    _examples,
    audio_problem,
    combine,
    copy_data_dir,
    filter_by_duration,
    filter_lines,
    fix,
    read_table,
    spk2utt_to_utt2spk,
    split_by_group,
    split_data,
    split_even,
    subset_ids,
    utt2spk_to_spk2utt,
    validate,
)
from xytok.data.table import TableError, iter_table
from xytok.data.table import read_table as _read_any_table

# Lists handed to a tool (id lists, utt2spk on stdin): blank lines and order do not matter.
read_table_lenient = partial(_read_any_table, strict=False)


def _stdin_or(path):
    return sys.stdin if path in (None, "-") else open(path, encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.datadir", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a data dir; exit 1 listing the problems")
    v.add_argument("--no-feats", "--no_feats", action="store_true")
    v.add_argument("--no-text", "--no_text", action="store_true")
    v.add_argument("--check-audio", "--check_audio", action="store_true",
                   help="read every audio/feature entry (needs soundfile/kaldiio)")
    v.add_argument("--fs", type=int, default=None, help="expected sample rate (with --check-audio)")
    v.add_argument("data")
    ca = sub.add_parser("check-audio", help="read every entry of a wav.scp (headers + a few frames); "
                        "list each unusable one (recipe stage 1)")
    ca.add_argument("--report", help="write '<utt>\\t<problem>' lines here (default: stdout); exit 0 "
                                     "even when some are bad, so a caller can gather all reports")
    ca.add_argument("wav_scp")
    f = sub.add_parser("fix", help="sort, keep the common utterances, rebuild spk2utt")
    f.add_argument("--no-backup", action="store_true")
    f.add_argument("data")
    s = sub.add_parser("split", help="write <data>/split<N>/<n>/")
    s.add_argument("--per-spk", "--per_spk", action="store_true",
                   help="keep each speaker in one part (Kaldi's default; ours splits by utterance)")
    s.add_argument("data")
    s.add_argument("n", type=int)
    ss = sub.add_parser("split-scp", help="split a table into N contiguous parts")
    ss.add_argument("--utt2spk", help="keep the lines of a speaker together")
    ss.add_argument("input")
    ss.add_argument("outputs", nargs="+")
    fd = sub.add_parser("filter-duration", help="keep utterances with min <= duration <= max")
    fd.add_argument("--min", type=float, default=0.0)
    fd.add_argument("--max", type=float, default=math.inf)
    fd.add_argument("--fs", type=int, default=16000, help="sample rate of utt2num_samples")
    fd.add_argument("src")
    fd.add_argument("dst")
    su = sub.add_parser("subset", usage="subset [--first | --last] <src> <N> <dst> | "
                        "subset --utt-list FILE <src> <dst>",
                        help="copy the utterances listed in a file, or N of them (evenly spaced, "
                             "or the first/last N)")
    su.add_argument("--utt-list", "--utt_list")
    su.add_argument("--first", action="store_true")
    su.add_argument("--last", action="store_true")
    su.add_argument("args", nargs="+", metavar="src [N] dst")
    c = sub.add_parser("copy", help="copy a data dir, optionally prefixing ids")
    for opt in ("utt-prefix", "utt-suffix", "spk-prefix", "spk-suffix"):
        c.add_argument(f"--{opt}", f"--{opt.replace('-', '_')}", default="")
    c.add_argument("src")
    c.add_argument("dst")
    cb = sub.add_parser("combine", help="union of data dirs")
    cb.add_argument("dst")
    cb.add_argument("srcs", nargs="+")
    for name in ("utt2spk-to-spk2utt", "spk2utt-to-utt2spk"):
        x = sub.add_parser(name)
        x.add_argument("input", nargs="?")
    fs_ = sub.add_parser("filter-scp", help="lines whose id is (--exclude: is not) in idlist")
    fs_.add_argument("--exclude", action="store_true")
    fs_.add_argument("-f", "--field", type=int, default=1, help="field of the input holding the id")
    fs_.add_argument("idlist")
    fs_.add_argument("input", nargs="?")
    a = p.parse_args(argv)

    err = lambda *m: print(*m, file=sys.stderr)  # noqa: E731
    try:
        if a.cmd == "validate":
            problems = validate(a.data, a.no_feats, a.no_text, a.check_audio, a.fs)
            if problems:
                err(f"validate_data_dir: {a.data}: {len(problems)} problem(s):")
                for prob in problems:
                    err(f"  - {prob}")
                return 1
            n = len(read_table(os.path.join(a.data, "utt2spk")))
            print(f"validate_data_dir: {a.data}: OK ({n} utterances)")
        elif a.cmd == "check-audio":
            from xytok.audio import read_wav_scp

            entries = read_wav_scp(a.wav_scp)
            bad = []
            for i, (utt, value) in enumerate(entries.items(), 1):
                problem = audio_problem(value)
                if problem:
                    bad.append(f"{utt}\t{problem}\n")
                if i % 5000 == 0:
                    err(f"check-audio: {i}/{len(entries)} entries of {a.wav_scp} read")
            if a.report:
                with open(a.report, "w", encoding="utf-8") as fo:
                    fo.writelines(bad)
            else:
                sys.stdout.writelines(bad)
            err(f"check-audio: {a.wav_scp}: {len(entries)} entries, {len(bad)} unusable")
            return 0 if a.report or not bad else 1
        elif a.cmd == "fix":
            fix(a.data, backup=not a.no_backup, log=err)
        elif a.cmd == "split":
            split_data(a.data, a.n, a.per_spk)
        elif a.cmd == "split-scp":
            # Lines are copied verbatim and need not be sorted (as Kaldi's split_scp.pl).
            with open(a.input, encoding="utf-8") as fi:
                raw = [line for line in fi if line.strip()]
            keys = [line.split()[0] for line in raw]
            if a.utt2spk:
                utt2spk = read_table(a.utt2spk)
                missing = [k for k in keys if k not in utt2spk]
                if missing:
                    raise DataDirError(f"{a.utt2spk}: no speaker for {_examples(missing)} of {a.input}")
                parts = split_by_group(keys, utt2spk, len(a.outputs))
            else:
                parts = split_even(keys, len(a.outputs))
            start = 0  # parts are contiguous: copy the same number of raw lines to each output
            for out, part in zip(a.outputs, parts):
                with open(out, "w", encoding="utf-8") as fo:
                    for line in raw[start:start + len(part)]:
                        fo.write(line if line.endswith("\n") else line + "\n")
                start += len(part)
        elif a.cmd == "filter-duration":
            filter_by_duration(a.src, a.dst, a.min, a.max, a.fs, log=err)
        elif a.cmd == "subset":
            if a.utt_list and len(a.args) == 2:
                src, dst = a.args
                keep = list(read_table_lenient(a.utt_list, key_name="utterance id"))
                d = DataDir.load(src)
            elif not a.utt_list and len(a.args) == 3 and a.args[1].isdigit():
                src, n, dst = a.args[0], int(a.args[1]), a.args[2]
                d = DataDir.load(src)
                keep = subset_ids(d.utt_ids(), n, "first" if a.first else "last" if a.last else "even")
            else:
                raise DataDirError("usage: subset --utt-list FILE <src> <dst>  or  "
                                   "subset [--first|--last] <src> <N> <dst>")
            unknown = [u for u in keep if u not in d.utt2spk]
            if unknown:
                raise DataDirError(f"{src}: {len(unknown)} listed utterance(s) not in the data dir: "
                                   f"{_examples(unknown)}")
            d.subset(keep).write(dst)
        elif a.cmd == "copy":
            copy_data_dir(a.src, a.dst, a.utt_prefix, a.utt_suffix, a.spk_prefix, a.spk_suffix)
        elif a.cmd == "combine":
            combine(a.dst, a.srcs, log=err)
        elif a.cmd in ("utt2spk-to-spk2utt", "spk2utt-to-utt2spk"):
            with _stdin_or(a.input) as fi:
                table = read_table_lenient(fi)
            conv = utt2spk_to_spk2utt if a.cmd == "utt2spk-to-spk2utt" else spk2utt_to_utt2spk
            for k, val in conv(table).items():
                sys.stdout.write(f"{k} {val}\n")
        elif a.cmd == "filter-scp":
            # an id list may repeat ids (as Kaldi's filter_scp.pl allows)
            ids = {key for key, _, _ in iter_table(a.idlist, unique=False)}
            with _stdin_or(a.input) as fi:
                for line in filter_lines(fi, ids, a.exclude, a.field):
                    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    except (DataDirError, TableError, OSError, ValueError) as e:
        err(f"{a.cmd}: error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
