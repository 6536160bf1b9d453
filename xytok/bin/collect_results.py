"""Collect several scored models into one comparison table, with the paper's numbers alongside.

  python -m xytok.bin.collect_results exp/stage1_a/decode exp/stage2_b/decode/test_clean/score \\
      [--output compare.md] [--no_paper]

Each argument is a score dir (holding summary.json), a decode dir (<exp>/<tag>) or a model exp dir;
every */score/summary.json found below it is one row (plus its ground-truth row).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.collect_results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="score dirs, decode dirs or exp dirs")
    p.add_argument("--output", default=None, help="write the Markdown here (default: stdout only)")
    p.add_argument("--no_paper", action="store_true", help="leave out the paper's rows")
    return p


def find_score_dirs(d: Path) -> list[Path]:
    if (d / "summary.json").is_file():
        return [d]
    return sorted(p.parent for p in d.rglob("score/summary.json"))


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from xytok.eval.results import codec_info, comparison_table, find_config, find_probe, load_json

    entries = []
    for d in args.dirs:
        found = find_score_dirs(Path(d))
        if not found:
            print(f"collect_results: {d}: no score/summary.json found", file=sys.stderr)
            return 1
        for score_dir in found:
            decode_dir = score_dir.resolve().parent.parent  # <exp>/<tag>/<set>/score -> <exp>/<tag>
            probe = find_probe(decode_dir)
            entries.append({"name": decode_dir.parent.name, "test_set": score_dir.resolve().parent.name,
                            "summary": load_json(score_dir / "summary.json"), "probe": probe,
                            "info": codec_info(find_config(decode_dir, probe))})
    text = comparison_table(entries, with_paper=not args.no_paper)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
