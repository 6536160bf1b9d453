"""Training outputs: train.log, metrics.jsonl, tensorboard scalars/images, progress with rate/ETA.

Only rank 0 writes files. metrics.jsonl holds one JSON object per logging event:
  {"step": N, "split": "train"|"valid", "<name>": value, ...}
On resume, lines with a step beyond the checkpoint's step (logged after the last save and then
lost with the crash) are dropped so the file reads like one uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, Optional

log = logging.getLogger("xytok.train")


def setup_logging(exp_dir: Optional[Path], rank: int, level=logging.INFO) -> None:
    """Console logging on every rank (prefixed), train.log on rank 0."""
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter(
        f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
    )
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    if rank != 0:
        console.setLevel(logging.WARNING)
    root.addHandler(console)
    if exp_dir is not None and rank == 0 and not _stderr_is(Path(exp_dir) / "train.log"):
        fh = logging.FileHandler(Path(exp_dir) / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def _stderr_is(path: Path) -> bool:
    """True when stderr already goes to `path` (the recipe's job runner logs to exp/train.log):
    then a second handler on the same file would duplicate every line."""
    import os

    try:
        a, b = os.fstat(sys.stderr.fileno()), os.stat(path)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except (OSError, ValueError, AttributeError):
        return False


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def _cuda_peak_memory() -> str:
    """', peak mem X GiB' (this process's CUDA allocator peak) when CUDA is in use, else ''."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return ""
    return f", peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


class Reporter:
    def __init__(self, exp_dir: Path, enabled: bool, use_tensorboard: bool = True):
        self.exp_dir = Path(exp_dir)
        self.enabled = enabled
        self.writer = None
        if enabled and use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.exp_dir / "tensorboard"))
            except Exception as e:  # tensorboard missing/broken: keep training, say so once
                log.warning("tensorboard disabled: %s", e)
        self.metrics_path = self.exp_dir / "metrics.jsonl"
        self._t0 = time.time()
        self._step0 = 0

    def truncate_after(self, step: int) -> None:
        """Drop metrics.jsonl lines logged after `step` (resume from a checkpoint at `step`)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line half-written when the process was killed
        self.metrics_path.write_text("".join(l + "\n" for l in kept))

    def start_clock(self, step: int) -> None:
        self._t0 = time.time()
        self._step0 = step

    def log_metrics(self, step: int, split: str, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split}
        record.update({k: float(v) for k, v in sorted(values.items())})
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{split}/{k}", float(v), step)

    def progress_line(self, step: int, max_steps: int, epoch: int, values: Dict[str, float]) -> str:
        elapsed = time.time() - self._t0
        done = step - self._step0
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (max_steps - step) / rate if rate and rate > 0 else float("nan")
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        return (
            f"step {step}/{max_steps} ({100.0 * step / max(max_steps, 1):.1f}%) epoch {epoch} | {shown} | "
            f"{rate:.3f} steps/s, {1.0 / rate if rate > 0 else float('nan'):.3f} s/step, "
            f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}{_cuda_peak_memory()}"
        )

    def add_image(self, tag: str, figure, step: int, png_path: Optional[Path] = None) -> None:
        """Save a matplotlib figure as PNG (images/) and to tensorboard."""
        if not self.enabled:
            return
        if png_path is not None:
            png_path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(png_path, dpi=80)
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=False)

    def add_text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
