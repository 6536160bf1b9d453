"""Progress as log lines with rate and ETA (recipe jobs log to files, where tqdm bars are noise)."""
import logging
import time
from typing import Optional


class ProgressLog:
    """Call ``update(done)`` as items finish; logs ``name: done/total unit, rate, elapsed, ETA`` at
    most every ``every`` seconds, and always for the last item."""

    def __init__(self, total: int, name: str, unit: str = "utts", every: float = 10.0,
                 logger: Optional[logging.Logger] = None):
        self.total, self.name, self.unit, self.every = total, name, unit, every
        self.log = logger or logging.getLogger("xytok")
        self.t0 = self.last = time.time()

    def update(self, done: int, extra: str = "") -> None:
        now = time.time()
        if now - self.last < self.every and done != self.total:
            return
        elapsed = max(now - self.t0, 1e-6)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        self.log.info("%s: %d/%d %s%s, %.1f %s/s, elapsed %.0fs, ETA %.0fs", self.name, done, self.total,
                      self.unit, extra, rate, self.unit, elapsed, eta)
        self.last = now
