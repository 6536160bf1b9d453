"""Average model weights of the last N (or best N by a valid metric) step snapshots of an exp dir.

  python -m xytok.bin.average_checkpoints --exp_dir exp/stage1 --last 5 --out exp/stage1/ave_5last.pth
  python -m xytok.bin.average_checkpoints --exp_dir exp/stage1 --best 3 --metric mel_loss --out ...
Best-N uses metrics.jsonl valid entries at the snapshot steps (lower is better unless --higher_better).
Integer buffers (e.g. codebook `inited` flags) are taken from the newest snapshot.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger("xytok.average")


def average_states(paths):
    states = [torch.load(p, map_location="cpu", weights_only=False)["models"] for p in paths]
    out = {}
    for name in states[-1]:
        avg = {}
        for k, v in states[-1][name].items():
            if torch.is_floating_point(v):
                avg[k] = sum(s[name][k].double() for s in states).div(len(states)).to(v.dtype)
            else:
                avg[k] = v.clone()
        out[name] = avg
    return out


def select(exp_dir: Path, last: int = 0, best: int = 0, metric: str = "loss", higher_better: bool = False):
    from xytok.train.checkpointing import list_snapshots, snapshot_step

    snaps = list_snapshots(exp_dir)
    if not snaps:
        raise SystemExit(f"{exp_dir}: no checkpoints/step*.pth snapshots")
    if last:
        return snaps[-last:]
    by_step = {snapshot_step(p): p for p in snaps}
    scores = {}
    for line in (exp_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "valid" and r["step"] in by_step and metric in r:
            scores[r["step"]] = r[metric]
    if not scores:
        raise SystemExit(f"{exp_dir}: no valid '{metric}' at any snapshot step {sorted(by_step)}")
    ranked = sorted(scores, key=lambda s: scores[s], reverse=higher_better)[:best]
    return [by_step[s] for s in sorted(ranked)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--last", type=int, default=0, help="average the last N snapshots")
    g.add_argument("--best", type=int, default=0, help="average the best N snapshots by --metric")
    p.add_argument("--metric", default="loss", help="valid metric for --best [default: %(default)s]")
    p.add_argument("--higher_better", action="store_true")
    p.add_argument("--out", required=True, help="output .pth ({'models': ...}, usable with --init_param)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths = select(Path(a.exp_dir), a.last, a.best, a.metric, a.higher_better)
    log.info("averaging %s", [str(x) for x in paths])
    from xytok.train.checkpointing import atomic_torch_save

    atomic_torch_save({"models": average_states(paths), "averaged": [str(x) for x in paths]}, Path(a.out))
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
