"""Length-bucketed batch sampler: frame budget, determinism, exactly-once equal DDP shards, resume skip,
shard-local shuffling."""
import numpy as np
import pytest

from xytok.data.sampler import BucketBatchSampler, make_batches


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


@pytest.mark.parametrize("n,world", [(23, 3), (7, 2), (5, 5), (101, 4), (1, 1)])
def test_ranks_equal_length_and_every_item_exactly_once(n, world):
    lens = lengths(n)
    per_rank = [[i for b in BucketBatchSampler(lens, 3000, 4, shuffle=True, seed=0, epoch=1, rank=r,
                                               world_size=world) for i, _ in b] for r in range(world)]
    counts = {len(BucketBatchSampler(lens, 3000, 4, shuffle=True, seed=0, epoch=1, rank=r, world_size=world))
              for r in range(world)}
    assert len(counts) == 1
    flat = [i for r in per_rank for i in r]
    assert sorted(flat) == list(range(n))  # no item twice, none missing


def test_more_ranks_than_items_is_an_error():
    with pytest.raises(ValueError, match="cannot be spread over 4 ranks"):
        BucketBatchSampler(lengths(3), 3000, 4, shuffle=True, world_size=4)


def test_groups_stay_together_in_the_epoch_order():
    # 20 shards of 10 items: with a window of one batch's items, each batch comes from one shard
    n = 200
    groups = np.repeat(np.arange(20), 10)
    lens = lengths(n)
    batches = make_batches(lens, 10 ** 9, 5, True, seed=3, epoch=0, bucket_size=2, groups=groups)
    assert sorted(i for b in batches for i in b) == list(range(n))
    spans = [len({int(groups[i]) for i in b}) for b in batches]
    assert max(spans) <= 2  # a window of 10 consecutive items spans at most 2 shards
    ungrouped = make_batches(lens, 10 ** 9, 5, True, seed=3, epoch=0, bucket_size=2)
    assert max(len({int(groups[i]) for i in b}) for b in ungrouped) > 2


def test_skip():
    lens = lengths(23)
    full = list(BucketBatchSampler(lens, 3000, 4, shuffle=True, seed=0, epoch=2, rank=1, world_size=3))
    rest = list(BucketBatchSampler(lens, 3000, 4, shuffle=True, seed=0, epoch=2, rank=1, world_size=3, skip_batches=2))
    assert rest == full[2:] and all(e == 2 for b in full for _, e in b)
