"""torch.distributed setup from the torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*).

NCCL on GPU, gloo on CPU. A plain `python -m xytok.bin.train` (no torchrun) is world_size 1 and
never touches torch.distributed, so single-process CPU runs need no rendezvous.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(ngpu: int = 0, timeout_minutes: int = 30) -> DistInfo:
    """Read the torchrun env; init the process group when world_size > 1; pick the device.

    ngpu = 0 forces CPU (and gloo) even when CUDA is visible, like ESPnet's `--ngpu 0`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = ngpu > 0 and torch.cuda.is_available()
    if ngpu > 0 and not torch.cuda.is_available():
        raise RuntimeError(f"--ngpu {ngpu} requested but CUDA is not available (use --ngpu 0 for CPU)")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """All-reduce a boolean with MAX: used as the "my shard is exhausted" flag so that every rank
    leaves the epoch at the same step (no deadlock in the next collective with unequal shards)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_mean_dict(values: dict, device: torch.device, weight: float = 1.0) -> dict:
    """Weighted mean of a {name: float} dict over ranks (same keys on every rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    total = t[-1].item()
    return {k: (t[i].item() / total if total > 0 else float("nan")) for i, k in enumerate(keys)}


def all_gather_object(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
