"""The Task interface: what a training stage plugs into the generic Trainer.

The Trainer (xytok/train/trainer.py) owns everything that is the same for every stage:
config, DDP, data loading, AMP, LR schedules, checkpoints/resume, logging, validation cadence.
A Task owns the model-specific parts: which modules exist, how one optimisation step looks
(stage 2 = GAN needs two optimiser steps per batch), what to validate and what to export.

Lifecycle (see docs/CONTRACTS.md "Training task interface"):
    task = TaskClass(config, output_dir)
    models = task.build_models()                  # {"generator": nn.Module, ...}
    (trainer moves models to device, handles --init_param via task.init_from())
    optims = task.build_optimizers(models)        # {"generator": Optimizer, ...}
    (trainer builds one warm-up+schedule LR scheduler per optimiser from config["scheduler"])
    for each micro-batch: task.train_step(batch, step, ctx) -> {name: float}
    every valid_interval: task.valid_step(batch, ctx) -> {name: float}, averaged over the valid set;
                          task.log_examples(batch, ctx, writer, step) on the first valid batch
    at the end: task.export(ctx, out_dir)
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Mapping

import torch

from xytok.train.optim import build_optimizer

# Short names usable as `task:` in a config; anything else must be "package.module:ClassName".
TASK_REGISTRY = {
    "stage1": "xytok.train.stage1:Stage1Task",
    "stage2": "xytok.train.stage2:Stage2Task",
}


class Task:
    """Base class. Subclasses implement build_models, build_optimizers, train_step, valid_step."""

    # Config defaults merged under the user config (the trainer also has its own defaults).
    default_config: Dict[str, Any] = {}

    def __init__(self, config: Dict[str, Any], output_dir: Path):
        self.config = config
        self.output_dir = Path(output_dir)

    # -- construction -----------------------------------------------------------------------
    def build_models(self) -> Dict[str, torch.nn.Module]:
        raise NotImplementedError

    def build_optimizers(self, models: Mapping[str, torch.nn.Module]) -> Dict[str, torch.optim.Optimizer]:
        """Default: one AdamW per model over its trainable parameters, from config["optim"].

        config["optim"] may be a single dict (applied to every model) or {model_name: dict}.
        """
        optim_conf = self.config.get("optim", {})
        out = {}
        for name, model in models.items():
            conf = optim_conf.get(name, optim_conf) if isinstance(optim_conf.get(name), dict) else optim_conf
            params = [p for p in model.parameters() if p.requires_grad]
            if params:
                out[name] = build_optimizer(params, conf)
        return out

    def init_from(self, models: Mapping[str, torch.nn.Module], state: Mapping[str, Any]) -> None:
        """--init_param: load weights from `state` (a released ckpt {'generator': sd} or a training
        checkpoint {'models': {name: sd}, ...}) into `models` before training starts.
        Default: non-strict load of each model present in the state, with a log of missing keys."""
        import logging

        log = logging.getLogger("xytok.train")
        sources = state.get("models", state)
        for name, model in models.items():
            if name not in sources:
                log.warning("--init_param: no weights for model %r (have %s)", name, list(sources))
                continue
            missing, unexpected = model.load_state_dict(sources[name], strict=False)
            log.info("--init_param: %s loaded (%d missing, %d unexpected keys)", name, len(missing), len(unexpected))
            # A partial load leaves random weights behind: say so where it is seen.
            if missing:
                log.warning("--init_param: model %r: %d keys missing from the checkpoint (they keep their "
                            "initialisation), e.g. %s", name, len(missing), missing[:5])
            if unexpected:
                log.warning("--init_param: model %r: %d unexpected keys in the checkpoint ignored, e.g. %s",
                            name, len(unexpected), unexpected[:5])

    # -- steps ------------------------------------------------------------------------------
    def train_step(self, batch: Dict[str, Any], step: int, ctx) -> Dict[str, float]:
        """One micro-batch: forward under ctx.autocast(), ctx.backward(loss, ...),
        ctx.optimizer_step(name) (a no-op until the accumulation boundary). Return floats to log."""
        raise NotImplementedError

    @torch.no_grad()
    def valid_step(self, batch: Dict[str, Any], ctx) -> Dict[str, float]:
        raise NotImplementedError

    def log_examples(self, batch: Dict[str, Any], ctx, writer, step: int) -> None:
        """Optional: images / audio / transcripts of the first validation batch (rank 0 only)."""

    def export(self, ctx, out_dir: Path) -> None:
        """Optional: write out_dir/config.yaml + out_dir/model.ckpt in the released format."""

    def extra_state(self) -> Dict[str, Any]:
        """Anything else the task needs restored on resume (beyond models/optims/schedulers)."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        pass


def resolve_task_class(name: str):
    """`stage1` / `stage2` or `package.module:ClassName` -> Task subclass."""
    target = TASK_REGISTRY.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown task {name!r}: use one of {sorted(TASK_REGISTRY)} or 'module:Class'")
    module_name, cls_name = target.split(":", 1)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, cls_name)
    except AttributeError as e:
        raise ValueError(f"task {name!r}: {module_name} has no class {cls_name}") from e
