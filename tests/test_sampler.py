"""Length-bucketed batch sampler: frame budget, determinism, equal DDP shards, resume skip."""
import numpy as np

from xytok.data.sampler import BucketBatchSampler, make_batches, shard_batches


def lengths(n=57, seed=0):
    return np.random.default_rng(seed).integers(1280, 16000 * 6, size=n).tolist()


def test_budget_and_cover():
    lens = lengths()
    batches = make_batches(lens, max_frames=2000, max_batch_size=8, shuffle=True, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lens)))
    for b in batches:
        frames = max(-(-lens[i] // 160) for i in b)
        assert len(b) <= 8 and (len(b) * frames <= 2000 or len(b) == 1)


def test_deterministic_per_epoch_and_different_across_epochs():
    lens = lengths()
    a = make_batches(lens, 2000, 8, True, seed=1, epoch=3)
    assert a == make_batches(lens, 2000, 8, True, seed=1, epoch=3)
    assert a != make_batches(lens, 2000, 8, True, seed=1, epoch=4)
    assert make_batches(lens, 2000, 8, False, 1, 0) == make_batches(lens, 2000, 8, False, 9, 5)


def test_shards_equal_length_and_skip():
    lens = lengths(23)
    batches = make_batches(lens, 3000, 4, True, seed=0, epoch=0)
    shards = [shard_batches(batches, r, 3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert {i for s in shards for b in s for i in b} == set(range(23))
    full = list(BucketBatchSampler(lens, 3000, 4, shuffle=True, seed=0, epoch=2, rank=1, world_size=3))
    rest = list(BucketBatchSampler(lens, 3000, 4, shuffle=True, seed=0, epoch=2, rank=1, world_size=3, skip_batches=2))
    assert rest == full[2:] and all(e == 2 for b in full for _, e in b)
