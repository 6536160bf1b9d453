"""Atomic checkpoints, keep-last-N snapshots, RNG state capture/restore.

Layout in the exp dir:
  checkpoint.pth          full training state of the latest save (resume target)
  checkpoint.prev.pth     the one before it (kept so a crash mid-save never loses everything)
  checkpoints/step{N}.pth model weights only ({'models': ..., 'step': N}), the last `keep_last` kept;
                          these feed bin/average_checkpoints.py
Every write goes to a temp file in the same directory, is fsync'ed, then os.replace'd into place
(atomic on POSIX), so a reader never sees a half-written file.
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from xytok.checkpoint import atomic_write

log = logging.getLogger("xytok.train")

CHECKPOINT = "checkpoint.pth"
PREVIOUS = "checkpoint.prev.pth"
SNAPSHOT_DIR = "checkpoints"
_SNAPSHOT_RE = re.compile(r"^step(\d+)\.pth$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file next to `path`, fsync, then os.replace (never a partial file)."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def save_training_checkpoint(state: Dict[str, Any], exp_dir: Path) -> Path:
    """Write checkpoint.pth atomically, keeping the previous one as checkpoint.prev.pth."""
    exp_dir = Path(exp_dir)
    target = exp_dir / CHECKPOINT

    def keep_previous():
        # Order matters: until the new file is renamed in, checkpoint.prev.pth is a complete checkpoint.
        if target.exists():
            os.replace(target, exp_dir / PREVIOUS)

    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(target, write, before_replace=keep_previous)
    return target


def find_resume_checkpoint(exp_dir: Path) -> Optional[Path]:
    """checkpoint.pth if it loads, else checkpoint.prev.pth (a crash between the two renames)."""
    for name in (CHECKPOINT, PREVIOUS):
        p = Path(exp_dir) / name
        if p.exists():
            return p
    return None


def load_checkpoint(path: Path) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated/corrupt file: say which one
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e


def load_resume_state(exp_dir: Path) -> Optional[Dict[str, Any]]:
    """Try checkpoint.pth then checkpoint.prev.pth; a corrupt latest falls back with a warning."""
    last_error = None
    for name in (CHECKPOINT, PREVIOUS):
        p = Path(exp_dir) / name
        if not p.exists():
            continue
        try:
            state = load_checkpoint(p)
            log.info("resuming from %s (step %d)", p, state.get("step", -1))
            return state
        except RuntimeError as e:
            log.warning("%s; trying the previous checkpoint", e)
            last_error = e
    if last_error is not None:
        raise last_error
    return None


def save_snapshot(models_state: Dict[str, Any], step: int, exp_dir: Path, keep_last: int) -> Path:
    snap_dir = Path(exp_dir) / SNAPSHOT_DIR
    path = snap_dir / f"step{step}.pth"
    atomic_torch_save({"models": models_state, "step": step}, path)
    if keep_last and keep_last > 0:
        for old in list_snapshots(exp_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def list_snapshots(exp_dir: Path) -> List[Path]:
    """Snapshots sorted by step (oldest first)."""
    snap_dir = Path(exp_dir) / SNAPSHOT_DIR
    if not snap_dir.is_dir():
        return []
    found = []
    for p in snap_dir.iterdir():
        m = _SNAPSHOT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def snapshot_step(path: Path) -> int:
    m = _SNAPSHOT_RE.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a step snapshot (expected stepN.pth)")
    return int(m.group(1))


# -- RNG -------------------------------------------------------------------------------------
def get_rng_state() -> Dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
