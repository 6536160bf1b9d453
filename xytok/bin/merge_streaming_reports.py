"""Merge the streaming.json reports of parallel `xytok decode --streaming` jobs into one (recipe stage 8).

  python -m xytok.bin.merge_streaming_reports --out exp/m/decode/test/wav/streaming.json \
      exp/m/decode/test/wav/split.*/streaming.json

Totals are summed (utterances, audio and compute seconds); RTF = total compute / total audio; the mean
time to first audio is weighted by each job's utterances; the max is the max over jobs. The model's
latency fields must agree across jobs (same model, same chunking).
"""
from __future__ import annotations

import argparse
import json
import sys

SUMMED = ("utterances", "audio_seconds", "compute_seconds")
PER_JOB = ("rtf", "first_audio_compute_ms_mean", "first_audio_compute_ms_max")


def merge_reports(reports: list) -> dict:
    if not reports:
        raise ValueError("no streaming reports to merge")
    fixed = {k: v for k, v in reports[0].items() if k not in SUMMED + PER_JOB}
    for i, r in enumerate(reports[1:], 2):
        differ = sorted(k for k in fixed if r.get(k) != fixed[k])
        if differ:
            raise ValueError(f"report {i} differs from report 1 in {differ}: not the same model/chunking")
    out = dict(fixed)
    for k in SUMMED:
        out[k] = sum(r[k] for r in reports)
    out["rtf"] = out["compute_seconds"] / max(out["audio_seconds"], 1e-9)
    n = max(out["utterances"], 1)
    out["first_audio_compute_ms_mean"] = sum(r["first_audio_compute_ms_mean"] * r["utterances"] for r in reports) / n
    out["first_audio_compute_ms_max"] = max(r["first_audio_compute_ms_max"] for r in reports)
    out["jobs"] = len(reports)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="merged streaming.json to write")
    p.add_argument("reports", nargs="+", help="the jobs' streaming.json files")
    a = p.parse_args(argv)
    reports = []
    for path in a.reports:
        try:
            with open(path) as f:
                report = json.load(f)
            missing = ([k for k in SUMMED + PER_JOB if k not in report] if isinstance(report, dict)
                       else ["(not a mapping)"])
            if missing:
                raise ValueError(f"not a streaming.json of `xytok decode --streaming`: lacks {', '.join(missing)}")
            reports.append(report)
        except (OSError, ValueError) as e:
            print(f"merge_streaming_reports: {path}: {e}", file=sys.stderr)
            return 1
    try:
        merged = merge_reports(reports)
    except (KeyError, ValueError) as e:
        print(f"merge_streaming_reports: {e}", file=sys.stderr)
        return 1
    with open(a.out, "w") as f:
        json.dump(merged, f, indent=1)
    print(f"streaming over {merged['jobs']} job(s), {merged['utterances']} utterances: first audio "
          f"{merged['first_audio_compute_ms_mean']:.1f} ms (mean compute), RTF {merged['rtf']:.3f} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
