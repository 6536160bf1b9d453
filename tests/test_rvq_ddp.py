"""Two gloo processes keep identical codebooks, equal to one process fed the whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xytok.nn.rvq import ResidualVQ

WORLD = 2
STEPS = 3


def _make_rvq(kmeans_and_dead_codes: bool) -> ResidualVQ:
    torch.manual_seed(0)
    rvq = ResidualVQ(input_dim=6, rvq_dim=3, output_dim=6, num_quantizers=3, codebook_size=8,
                     codebook_dim=3, decay=0.8, threshold_ema_dead_code=2 if kmeans_and_dead_codes else 0)
    if not kmeans_and_dead_codes:  # EMA path only: a known initialised codebook
        g = torch.Generator().manual_seed(1)
        for q in rvq.quantizers:
            q.codebook.copy_(torch.randn(8, 3, generator=g))
            q.embed_avg.copy_(q.codebook)
            q.cluster_size.fill_(1.0)
            q.inited.fill_(True)
    return rvq.train()


def _batches():
    """STEPS global batches of 4 items, padded, with different lengths."""
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 6, 9, generator=g), torch.tensor([9, 4, 7, 6])) for _ in range(STEPS)]


def _buffers(rvq):
    return {k: v.clone() for k, v in rvq.state_dict().items() if k.startswith("quantizers.")}


def _worker(rank, store_path, out_dir, kmeans_and_dead_codes):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        rvq = _make_rvq(kmeans_and_dead_codes)
        torch.manual_seed(100 + rank)  # ranks draw different random numbers on purpose
        half = 4 // WORLD
        for x, lengths in _batches():
            rvq(x[rank * half:(rank + 1) * half], lengths[rank * half:(rank + 1) * half])
        torch.save(_buffers(rvq), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(tmp_path, kmeans_and_dead_codes):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path), kmeans_and_dead_codes),
             nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_ddp_ema_equals_single_process_on_concatenated_batch(tmp_path):
    rank0, rank1 = _run_two_ranks(tmp_path, kmeans_and_dead_codes=False)
    single = _make_rvq(kmeans_and_dead_codes=False)
    for x, lengths in _batches():
        single(x, lengths)
    reference = _buffers(single)
    for key, value in reference.items():
        assert torch.equal(rank0[key], rank1[key]), f"ranks diverged on {key}"
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # the EMA really moved the codebooks
    assert not torch.allclose(reference["quantizers.0.codebook"], _buffers(_make_rvq(False))["quantizers.0.codebook"])


def test_ddp_kmeans_and_dead_codes_keep_ranks_identical(tmp_path):
    rank0, rank1 = _run_two_ranks(tmp_path, kmeans_and_dead_codes=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks diverged on {key}"
    assert all(bool(rank0[f"quantizers.{i}.inited"]) for i in range(3))
    assert rank0["quantizers.0.codebook"].abs().sum() > 0
