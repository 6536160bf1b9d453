"""torch.distributed setup from the torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*).

NCCL on GPU, gloo on CPU. A plain `python -m xytok.bin.train` (no torchrun) is world_size 1 and
never touches torch.distributed, so single-process CPU runs need no rendezvous. Under torchrun the
process group is set up even for a world of one (`torchrun --nproc_per_node 1`), so that such a
run goes through the same NCCL/gloo + DDP code as a multi-GPU one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
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
    process_group: bool = False  # a torch.distributed process group is up (torchrun, any world size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Collectives and DDP wrapping are on: several processes, or a torchrun world of one."""
        return self.world_size > 1 or self.process_group


def launched_by_torchrun(env=None) -> bool:
    """torchrun (torch.distributed.run) sets these for its workers, even with one process."""
    env = os.environ if env is None else env
    return "TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env


def init_distributed(ngpu: int = 0, timeout_minutes: int = 30) -> DistInfo:
    """Read the torchrun env; init the process group when world_size > 1 or under torchrun; pick
    the device.

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
    if (world_size > 1 or launched_by_torchrun()) and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                    process_group=dist.is_available() and dist.is_initialized())


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def local_rank_zero_first(local_rank: int | None = None):
    """Run the block on local rank 0 of every node first, then on the other ranks.

    Used around downloads of pretrained parts (Whisper, the LLM): one process per node fetches
    them into the node's Hugging Face cache while the others wait at a barrier, then they load
    from that cache. Without a process group it is a plain block. ``local_rank`` defaults to
    $LOCAL_RANK. If the block fails on rank 0 the barrier is still reached, so the others do not
    hang; they run the block themselves and fail with their own message.
    """
    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank != 0:
        dist.barrier()  # wait until every node's local rank 0 has left the block
    try:
        yield
    finally:
        if local_rank == 0:
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
