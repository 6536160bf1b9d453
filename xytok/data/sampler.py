"""Length-bucketed batch sampler with a padded-frames budget and equal-length DDP shards.

Batch order depends only on (seed, epoch): the same on every rank, the same after a resume.
Each rank gets the same number of batches (the global list is padded by repeating its first
batches), so no rank waits in a collective for one that ran out of data.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import numpy as np

FRAME_SAMPLES = 160  # one 100 Hz mel frame


def make_batches(lengths: Sequence[int], max_frames: int, max_batch_size: int, shuffle: bool,
                 seed: int, epoch: int, bucket_size: int = 100) -> List[List[int]]:
    """Group item indices into batches whose padded cost B * max_len (in mel frames) <= max_frames.

    With shuffle, items are permuted, sorted by length inside windows of bucket_size * max_batch_size
    items (so batches hold similar lengths but the epoch still mixes), and the batches are shuffled.
    Without shuffle (validation), items are sorted by length once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    frames = -(-lengths // FRAME_SAMPLES)
    n = len(lengths)
    if n == 0:
        return []
    rng = np.random.default_rng([int(seed), int(epoch)])
    if shuffle:
        order = rng.permutation(n)
        window = max(1, bucket_size * max_batch_size)
        chunks = [order[i:i + window] for i in range(0, n, window)]
        order = np.concatenate([c[np.argsort(frames[c], kind="stable")] for c in chunks])
    else:
        order = np.argsort(frames, kind="stable")

    batches: List[List[int]] = []
    current: List[int] = []
    current_max = 0
    for idx in order.tolist():
        f = int(frames[idx])
        new_max = max(current_max, f)
        if current and ((len(current) + 1) * new_max > max_frames or len(current) >= max_batch_size):
            batches.append(current)
            current, new_max = [], f
        current.append(idx)
        current_max = new_max
    if current:
        batches.append(current)
    if shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def shard_batches(batches: List[List[int]], rank: int, world_size: int) -> List[List[int]]:
    """Pad to a multiple of world_size (repeating the first batches), then take every world_size-th."""
    if world_size <= 1 or not batches:
        return list(batches)
    padded = list(batches)
    i = 0
    while len(padded) % world_size:
        padded.append(batches[i % len(batches)])
        i += 1
    return padded[rank::world_size]


class BucketBatchSampler:
    """Yields lists of (item index, epoch) for this rank, starting after `skip_batches` batches.

    The epoch travels with each index so that the dataset's random crop is a function of
    (seed, epoch, item) only — independent of worker processes and of resuming.
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, max_batch_size: int, *, shuffle: bool,
                 seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 skip_batches: int = 0, bucket_size: int = 100):
        batches = make_batches(lengths, max_frames, max_batch_size, shuffle, seed, epoch, bucket_size)
        self.epoch = epoch
        self.batches = shard_batches(batches, rank, world_size)
        self.skip_batches = int(skip_batches)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip_batches)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for batch in self.batches[self.skip_batches:]:
            yield [(i, self.epoch) for i in batch]
