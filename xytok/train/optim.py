"""Optimizer and learning-rate schedule factories (from the `optim:` / `scheduler:` config sections)."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable

import torch

from xytok.train.config import deep_merge

def build_optimizer(params: Iterable[torch.nn.Parameter], conf: Dict[str, Any]) -> torch.optim.Optimizer:
    conf = dict(conf)
    kind = conf.pop("type", "adamw").lower()
    conf.pop("scheduler", None)
    if "betas" in conf:
        conf["betas"] = tuple(conf["betas"])
    classes = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if kind not in classes:
        raise ValueError(f"unknown optimizer type {kind!r} (choose from {sorted(classes)})")
    return classes[kind](params, **conf)


def scheduler_conf_for(config: Dict[str, Any], name: str) -> Dict[str, Any]:
    """`scheduler:` for every optimizer, updated by `optim.<name>.scheduler:` when a task has
    several optimizers (e.g. a GAN generator warm-up that the discriminator does not share)."""
    per_opt = (config.get("optim") or {}).get(name)
    own = per_opt.get("scheduler") if isinstance(per_opt, dict) else None
    return deep_merge(config.get("scheduler") or {}, own or {})


def lr_lambda_factory(conf: Dict[str, Any], max_steps: int):
    """Linear warm-up, then cosine / linear decay to min_lr_ratio, or constant."""
    kind = conf.get("type", "cosine")
    warmup = int(conf.get("warmup_steps", 0))
    floor = float(conf.get("min_lr_ratio", 0.0))
    total = int(conf.get("total_steps") or max_steps)
    if kind not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown scheduler type {kind!r} (cosine | linear | constant)")

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return factor
