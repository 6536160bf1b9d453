"""Length-bucketed batches under a padded-frames budget, split over DDP ranks exactly once.

The plan of an epoch is a function of (lengths, groups, seed, epoch) only: the same on every rank
and after a resume, so resuming is "skip the batches already done". It is held in two numpy arrays
(item order + batch bounds), never in per-item Python objects, so 2 M utterances cost ~50 MB.

Shuffling keeps groups together: items of one tar shard (consecutive in the manifest) stay
neighbours in the epoch order, so a window of batches reads a few shards, not the whole corpus.
Every item is in exactly one batch of one rank: when the batch count is not a multiple of the
world size, the largest batches are split in two until it is, so no rank waits and no item repeats.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

FRAME_SAMPLES = 160  # one 100 Hz mel frame


def _greedy_bounds(frames: np.ndarray, max_frames: int, max_batch_size: int,
                   segment: int) -> np.ndarray:
    """Batch sizes for items taken in order, cut at least every `segment` items.

    A batch is closed before the item that would make (items) * (longest frames) exceed the budget
    or the size cap. Works on chunks of `segment` items so no Python list of the whole epoch is built.
    """
    sizes: List[int] = []
    n = len(frames)
    for s in range(0, n, segment):
        chunk = frames[s:s + segment].tolist()
        count, longest = 0, 0
        for f in chunk:
            new_longest = f if f > longest else longest
            if count and ((count + 1) * new_longest > max_frames or count >= max_batch_size):
                sizes.append(count)
                count, new_longest = 0, f
            count += 1
            longest = new_longest
        if count:
            sizes.append(count)
    return np.asarray(sizes, dtype=np.int64)


def _group_runs(groups: Optional[np.ndarray], n: int) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of runs of equal consecutive group ids (each item alone without groups)."""
    if groups is None or n == 0:
        return np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    g = np.asarray(groups)
    change = np.empty(n, dtype=bool)
    change[0] = True
    change[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(change).astype(np.int64)
    lens = np.diff(np.append(starts, n))
    return starts, lens


def _permute_runs(order: np.ndarray, starts: np.ndarray, lens: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """order with its contiguous runs (starts, lens) put in the order `perm`, vectorised."""
    starts, lens = starts[perm], lens[perm]
    first = np.cumsum(lens) - lens  # where each run lands
    return order[np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(first, lens) + np.repeat(starts, lens)]


def plan_epoch(lengths: Sequence[int], max_frames: int, max_batch_size: int, *, shuffle: bool,
               seed: int, epoch: int, bucket_size: int = 100, groups: Optional[np.ndarray] = None,
               world_size: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(order, bounds): batch b holds items order[bounds[b]:bounds[b + 1]].

    lengths are samples. With shuffle: runs of equal `groups` (shards) are permuted, items are
    sorted by length inside windows of bucket_size * max_batch_size consecutive items, batches are
    formed greedily in each window and the batches are permuted. Without shuffle (validation): one
    global length sort. The batch count is then made a multiple of world_size (see module doc).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    if n < world_size:
        raise ValueError(f"{n} utterance(s) cannot be spread over {world_size} ranks (each needs one)")
    frames = -(-lengths // FRAME_SAMPLES)
    rng = np.random.default_rng([int(seed), int(epoch)])
    window = max(1, int(bucket_size) * int(max_batch_size))
    if shuffle:
        starts, run_lens = _group_runs(groups, n)
        order = _permute_runs(np.arange(n, dtype=np.int64), starts, run_lens, rng.permutation(len(starts)))
        win = np.arange(n, dtype=np.int64) // window
        order = order[np.lexsort((frames[order], win))]
        sizes = _greedy_bounds(frames[order], max_frames, max_batch_size, window)
    else:
        order = np.argsort(frames, kind="stable").astype(np.int64)
        sizes = _greedy_bounds(frames[order], max_frames, max_batch_size, 1 << 20)
    sizes = _split_to_multiple(sizes, world_size)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if shuffle:
        perm = rng.permutation(len(sizes))
        order = _permute_runs(order, bounds[:-1], sizes, perm)
        bounds = np.concatenate([[0], np.cumsum(sizes[perm])]).astype(np.int64)
    return order, bounds


def _split_to_multiple(sizes: np.ndarray, world_size: int) -> np.ndarray:
    """Split the largest batches in two until the count is a multiple of world_size."""
    if world_size <= 1:
        return sizes
    sizes = list(sizes.tolist())
    while len(sizes) % world_size:
        i = max(range(len(sizes)), key=lambda k: (sizes[k], -k))
        if sizes[i] < 2:
            raise ValueError(f"{sum(sizes)} utterance(s) cannot be spread over {world_size} ranks")
        half = sizes[i] // 2
        sizes[i:i + 1] = [sizes[i] - half, half]
    return np.asarray(sizes, dtype=np.int64)


def make_batches(lengths: Sequence[int], max_frames: int, max_batch_size: int, shuffle: bool,
                 seed: int, epoch: int, bucket_size: int = 100, groups=None, world_size: int = 1
                 ) -> List[List[int]]:
    """The epoch plan as a list of index lists (for tests and small corpora)."""
    order, bounds = plan_epoch(lengths, max_frames, max_batch_size, shuffle=shuffle, seed=seed,
                               epoch=epoch, bucket_size=bucket_size, groups=groups, world_size=world_size)
    return [order[bounds[b]:bounds[b + 1]].tolist() for b in range(len(bounds) - 1)]


class BucketBatchSampler:
    """Yields this rank's batches of one epoch as lists of (item index, epoch), after `skip_batches`.

    The epoch travels with each index so that the dataset's random crop is a function of
    (seed, epoch, item) only, independent of worker processes and of resuming. Rank r takes batches
    r, r + W, r + 2W, ... of the epoch plan; every rank has the same number of batches.
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, max_batch_size: int, *, shuffle: bool,
                 seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 skip_batches: int = 0, bucket_size: int = 100, groups: Optional[np.ndarray] = None):
        self.epoch = int(epoch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.order, self.bounds = plan_epoch(lengths, max_frames, max_batch_size, shuffle=shuffle,
                                             seed=seed, epoch=epoch, bucket_size=bucket_size,
                                             groups=groups, world_size=world_size)
        self.num_batches = (len(self.bounds) - 1) // self.world_size
        self.skip_batches = int(skip_batches)
        self.yielded = self.skip_batches

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip_batches)

    def batch(self, k: int) -> List[int]:
        """This rank's k-th batch (item indices)."""
        b = self.rank + k * self.world_size
        return self.order[self.bounds[b]:self.bounds[b + 1]].tolist()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for k in range(self.skip_batches, self.num_batches):
            self.yielded = k + 1
            yield [(i, self.epoch) for i in self.batch(k)]

    def state_dict(self) -> dict:
        """Where this rank is in the epoch: enough to rebuild the sampler and continue."""
        return {"epoch": self.epoch, "batches_done": self.yielded, "rank": self.rank,
                "world_size": self.world_size}
