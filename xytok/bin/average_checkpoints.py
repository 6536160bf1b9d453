"""Average model weights of the last N (or best N by a valid metric) step snapshots of an exp dir.

  python -m xytok.bin.average_checkpoints --exp_dir exp/stage1 --last 5 --out exp/stage1/ave_5last.pth
  python -m xytok.bin.average_checkpoints --exp_dir exp/stage1 --best 3 --metric mel_loss --out ...
Best-N uses metrics.jsonl valid entries at the snapshot steps (lower is better unless --higher_better).
Float weights are averaged. The quantizer's codebooks and their EMA buffers (codebook, cluster_size,
embed_avg, inited of every RVQ layer) and integer buffers are taken from the newest snapshot: dead-code
replacement re-seeds codewords between snapshots, so an average would mix unrelated vectors (and
the codes the averaged encoder was trained to hit).

  --export_dir DIR   also write DIR/config.yaml + DIR/model.ckpt (released format, the layout of a
                     training run's export/): loadable by xytok.load_codec, packable with
                     python -m xytok.bin.pack_model --exp_dir <parent of DIR> (when DIR is .../export).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger("xytok.average")


# Buffers of one RVQ layer (xytok.nn.rvq.VectorQuantizer): a module with `inited` and `codebook`.
QUANTIZER_BUFFERS = ("codebook", "cluster_size", "embed_avg", "inited")


def quantizer_state_keys(state) -> set:
    """Keys of `state` that are RVQ codebooks / EMA buffers (taken from one snapshot, never averaged)."""
    prefixes = {k[: -len(".inited")] for k in state if k.endswith(".inited")}
    prefixes = {p for p in prefixes if f"{p}.codebook" in state}
    return {f"{p}.{b}" for p in prefixes for b in QUANTIZER_BUFFERS if f"{p}.{b}" in state}


def average_states(paths):
    """{model name: state dict}: float tensors averaged over `paths` (oldest first), the quantizer
    buffers and non-float tensors from the newest."""
    states = []
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=False)
        if "models" not in state:
            raise SystemExit(f"{p}: not a training snapshot (no 'models')")
        states.append(state["models"])
    out = {}
    for name in states[-1]:
        newest = states[-1][name]
        for p, s in zip(paths, states):
            if name not in s or set(s[name]) != set(newest):
                raise SystemExit(f"{p}: model {name!r} does not have the keys of the newest snapshot {paths[-1]}")
        keep = quantizer_state_keys(newest)
        avg = {}
        for k, v in newest.items():
            if torch.is_floating_point(v) and k not in keep:
                avg[k] = sum(s[name][k].double() for s in states).div(len(states)).to(v.dtype)
            else:
                avg[k] = v.clone()
        out[name] = avg
    return out


def _generator_params(exp_dir: Path):
    """The codec architecture of an exp dir: export/config.yaml (written by the run), else the
    resolved training config's generator_config file or generator_params."""
    import yaml

    for path in (exp_dir / "export" / "config.yaml", exp_dir / "config.yaml"):
        if not path.is_file():
            continue
        conf = yaml.safe_load(path.read_text()) or {}
        if conf.get("generator_config"):
            conf = yaml.safe_load(Path(conf["generator_config"]).read_text()) or {}
        if conf.get("generator_params"):
            return conf["generator_params"]
    raise SystemExit(f"{exp_dir}: no generator_params in export/config.yaml or config.yaml; cannot export")


def export_average(models, exp_dir: Path, out_dir: Path) -> None:
    """Write the averaged codec in the released format (strict load into the architecture first)."""
    from xytok.checkpoint import codec_weights
    from xytok.codec import load_codec
    from xytok.pretrained import write_pretrained

    params = _generator_params(exp_dir)
    codec = load_codec({"generator_params": params})
    try:
        codec.load_state_dict(codec_weights(models, str(exp_dir)), strict=True)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"{exp_dir}: averaged weights do not fit its generator_params: {e}") from e
    write_pretrained(codec.state_dict(), params, out_dir)  # the one export: config.yaml + weights


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
    p.add_argument("--export_dir", help="also write config.yaml + model.safetensors + model.ckpt (released format) here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths = select(Path(a.exp_dir), a.last, a.best, a.metric, a.higher_better)
    log.info("averaging %s", [str(x) for x in paths])
    from xytok.train.checkpointing import atomic_torch_save

    models = average_states(paths)
    atomic_torch_save({"models": models, "averaged": [str(x) for x in paths]}, Path(a.out))
    log.info("wrote %s", a.out)
    if a.export_dir:
        export_average(models, Path(a.exp_dir), Path(a.export_dir))
        log.info("exported %s/config.yaml + model.safetensors + model.ckpt", a.export_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
