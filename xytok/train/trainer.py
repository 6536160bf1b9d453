"""Generic trainer: config, DDP, data, AMP, LR schedule, checkpoint/resume, logging, validation.

The model-specific part is a Task (xytok/train/task.py). The trainer guarantees that a run that is
killed and re-run with the same command in the same exp dir continues bit-exactly (on CPU): it
restores every model/optimiser/scheduler/scaler state, the step/epoch counters, the position in
the epoch's batch list and all RNG states; batch order and crops depend only on (seed, epoch).
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from xytok.train import checkpointing as ckpt_lib
from xytok.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean_dict,
    any_rank_true,
    barrier,
)
from xytok.train.config import (  # noqa: F401  (re-exported: the trainer's config API)
    TRAINER_DEFAULTS,
    config_changes,
    deep_merge,
    load_config,
    parse_overrides,
    set_by_dotted_key,
)
from xytok.train.optim import build_optimizer, lr_lambda_factory, scheduler_conf_for  # noqa: F401
from xytok.train.reporter import Reporter
from xytok.train.task import Task

log = logging.getLogger("xytok.train")

# -- the step context handed to Task.train_step ---------------------------------------------------
class StepContext:
    """What a Task needs inside a step. `models` are DDP-wrapped where training is distributed
    (use them for forward so gradients sync); `raw_models` are the plain modules.

    Off the accumulation boundary the trainer runs the whole train_step (forward AND backward)
    inside `no_sync` of every DDP model: DDP decides in forward whether the backward all-reduces.
    A non-finite loss (seen by backward) or gradient norm makes optimizer_step skip the step on
    every rank (see Trainer._finish_step)."""

    def __init__(self, trainer: "Trainer"):
        self._t = trainer
        self.models: Dict[str, torch.nn.Module] = {}
        self.raw_models: Dict[str, torch.nn.Module] = {}
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.schedulers: Dict[str, Any] = {}
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.grad_norms: Dict[str, float] = {}
        self.micro_step = 0  # index of the current micro-batch within the accumulation window
        self._nonfinite_loss: Dict[str, bool] = {}  # model name -> a non-finite loss this window
        self.skipped: Dict[str, str] = {}  # optimizer name -> why its step was skipped (this step)

    # read-only views of trainer state
    @property
    def config(self): return self._t.config
    @property
    def device(self): return self._t.dist.device
    @property
    def rank(self): return self._t.dist.rank
    @property
    def world_size(self): return self._t.dist.world_size
    @property
    def is_main(self): return self._t.dist.is_main
    @property
    def step(self): return self._t.step
    @property
    def epoch(self): return self._t.epoch
    @property
    def grad_accum(self): return self._t.grad_accum
    @property
    def exp_dir(self): return self._t.exp_dir
    @property
    def reporter(self): return self._t.reporter

    @property
    def is_boundary(self) -> bool:
        """True on the last micro-batch of an accumulation window (optimisers really step)."""
        return (self.micro_step + 1) % self.grad_accum == 0

    def autocast(self):
        dtype = self._t.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def no_sync_unless_boundary(self):
        """`no_sync` of every DDP model off the boundary: wrap forward + backward (train_step)."""
        stack = contextlib.ExitStack()
        if not self.is_boundary:
            for m in self.models.values():
                if isinstance(m, torch.nn.parallel.DistributedDataParallel):
                    stack.enter_context(m.no_sync())
        return stack

    def backward(self, loss: torch.Tensor, models: Optional[List[str]] = None) -> None:
        """loss / grad_accum, scaled for fp16. A non-finite loss is remembered for the models'
        next optimizer_step (which then skips). The trainer handles DDP no_sync."""
        if not bool(torch.isfinite(loss.detach()).all()):
            for name in models or list(self.models):
                self._nonfinite_loss[name] = True
        loss = loss / self.grad_accum
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def optimizer_step(self, name: str, clip: Optional[float] = None) -> Optional[float]:
        """On the boundary: unscale, clip (config grad_clip unless given), step, zero_grad, LR step.
        Returns the pre-clip gradient norm (None off the boundary).

        A non-finite loss in the window or a non-finite gradient norm (without an fp16 scaler,
        whose overflow handling owns that case) skips the step on every rank: gradients are
        zeroed, neither the optimizer nor its LR schedule advance (the schedule follows real
        updates), and the trainer drops the window's codebook statistics."""
        if not self.is_boundary:
            return None
        opt = self.optimizers[name]
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        clip = self.config.get("grad_clip") if clip is None else clip
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if clip and clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
        loss_bad = (self._nonfinite_loss.pop(name, False) if name in self.models
                    else any(self._nonfinite_loss.values()))
        grad_bad = not math.isfinite(float(norm)) and self.scaler is None
        # The grad norm is the same on every rank after the all-reduce; a local loss is not.
        if any_rank_true(loss_bad, self.device):
            self.skipped[name] = "loss"
        elif grad_bad:
            self.skipped[name] = "gradient"
        if name in self.skipped:
            opt.zero_grad(set_to_none=True)
            self.grad_norms[name] = float(norm)
            return float(norm)
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if name in self.schedulers:
            self.schedulers[name].step()
        self.grad_norms[name] = float(norm)
        return float(norm)

    def lr(self, name: str) -> float:
        return self.optimizers[name].param_groups[0]["lr"]


# -- trainer --------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: Dict[str, Any], exp_dir: Path, task: Task, dist_info: DistInfo,
                 init_param: Optional[str] = None):
        self.config = config
        self.exp_dir = Path(exp_dir)
        self.task = task
        self.dist = dist_info
        self.init_param = init_param
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches of the current epoch already consumed (this rank)
        self.grad_accum = int(config.get("grad_accum", 1))
        self.max_steps = int(config["max_steps"])
        self.amp_dtype = self._amp_dtype(config.get("amp", "none"))
        self.max_nonfinite = int(config.get("max_nonfinite_steps", 10))
        self.nonfinite_total = 0    # optimizer steps skipped for a NaN/Inf loss or gradient
        self.nonfinite_in_a_row = 0
        self._quantizers: List[torch.nn.Module] = []  # training-time RVQs (EMA applied per step)
        self.reporter = Reporter(self.exp_dir, enabled=dist_info.is_main,
                                 use_tensorboard=bool(config.get("tensorboard", True)))
        self.ctx = StepContext(self)

    def _amp_dtype(self, amp: str):
        amp = (amp or "none").lower()
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none|bf16|fp16, got {amp!r}")
        if amp == "none" or self.dist.device.type != "cuda":
            if amp != "none":
                log.warning("amp=%s ignored on %s (fp32)", amp, self.dist.device)
            return None
        return torch.bfloat16 if amp == "bf16" else torch.float16

    # -- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        torch.manual_seed(int(self.config["seed"]) + self.dist.rank)
        import random
        import numpy as np

        random.seed(int(self.config["seed"]) + self.dist.rank)
        np.random.seed(int(self.config["seed"]) + self.dist.rank)
        if self.config.get("deterministic"):
            torch.use_deterministic_algorithms(True, warn_only=True)

        models = self.task.build_models()
        for m in models.values():
            m.to(self.dist.device)
        if self.init_param:
            log.info("--init_param %s", self.init_param)
            state = ckpt_lib.load_checkpoint(Path(self.init_param))
            self.task.init_from(models, state)
        self._log_param_counts(models)
        self.ctx.raw_models = models
        from xytok.nn.rvq import ResidualVQ

        # Codebook EMA / dead-code statistics accumulate over the micro-batches of a step and are
        # applied once on its boundary (or dropped when the step is skipped): _finish_step.
        self._quantizers = [m for model in models.values() for m in model.modules() if isinstance(m, ResidualVQ)]
        for quantizer in self._quantizers:
            quantizer.defer_updates = True
        self.ctx.optimizers = self.task.build_optimizers(models)
        self.ctx.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                opt, lr_lambda_factory(scheduler_conf_for(self.config, name), self.max_steps))
            for name, opt in self.ctx.optimizers.items()
        }
        if self.amp_dtype == torch.float16:
            self.ctx.scaler = torch.amp.GradScaler("cuda")
        self.ctx.models = {name: self._wrap_ddp(m) for name, m in models.items()}

    def _wrap_ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.dist.enabled or not any(p.requires_grad for p in model.parameters()):
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None,
            find_unused_parameters=bool(self.config.get("find_unused_parameters", False)),
        )

    def _log_param_counts(self, models: Dict[str, torch.nn.Module]) -> None:
        for name, model in models.items():
            rows = {}
            for pname, p in model.named_parameters():
                top = ".".join(pname.split(".")[:2])  # e.g. codec.acoustic_encoder
                t, f = rows.get(top, (0, 0))
                rows[top] = (t + p.numel(), f) if p.requires_grad else (t, f + p.numel())
            tot_t = sum(t for t, _ in rows.values())
            tot_f = sum(f for _, f in rows.values())
            log.info("model %r: %.3fM trainable, %.3fM frozen parameters", name, tot_t / 1e6, tot_f / 1e6)
            for top, (t, f) in rows.items():
                log.info("  %-28s trainable %12d  frozen %12d", top, t, f)

    # -- data -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check the data config, then build the manifests (Kaldi dir -> cached lazy manifest) on
        rank 0 while the other ranks wait, so N processes never convert the same dir at once."""
        from xytok.data.dataset import check_data_config
        from xytok.data.manifest import manifest_for

        check_data_config(self.config)
        dirs = [self.config["data"].get(k) for k in ("train", "valid")]
        if self.dist.is_main:
            for d in dirs:
                if d:
                    manifest_for(d)
        barrier()

    def _build_loader(self, data_dir: str, train: bool, epoch: int, skip_batches: int = 0):
        from xytok.data.dataset import build_dataloader

        return build_dataloader(
            self.task, data_dir, self.config, train=train, epoch=epoch,
            rank=self.dist.rank, world_size=self.dist.world_size, skip_batches=skip_batches,
            build_manifest=self.dist.is_main,
        )

    # -- checkpoints ----------------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        rng_states = all_gather_object(ckpt_lib.get_rng_state())
        return {
            "models": {n: m.state_dict() for n, m in self.ctx.raw_models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.ctx.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.ctx.schedulers.items()},
            "scaler": self.ctx.scaler.state_dict() if self.ctx.scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "micro_step": self.ctx.micro_step,
            "rng": rng_states,
            "world_size": self.dist.world_size,
            "task": self.task.extra_state(),
            "nonfinite": {"total": self.nonfinite_total, "in_a_row": self.nonfinite_in_a_row},
            "config": self.config,
        }

    def save(self) -> None:
        state = self._state()  # collective (RNG gather): every rank calls it
        if self.dist.is_main:
            t0 = time.time()
            ckpt_lib.save_training_checkpoint(state, self.exp_dir)
            ckpt_lib.save_snapshot(state["models"], self.step, self.exp_dir, int(self.config.get("keep_last", 5)))
            log.info("saved checkpoint at step %d (%.1f s)", self.step, time.time() - t0)
        barrier()

    def try_resume(self) -> bool:
        state = ckpt_lib.load_resume_state(self.exp_dir)
        if state is None:
            return False
        if state.get("world_size", 1) != self.dist.world_size:
            raise RuntimeError(
                f"{self.exp_dir}: checkpoint was written with world_size={state.get('world_size')} but this run "
                f"has {self.dist.world_size}; resume with the same number of processes (or use --init_param "
                f"{self.exp_dir}/checkpoint.pth to start a new run from its weights)"
            )
        for n, m in self.ctx.raw_models.items():
            m.load_state_dict(state["models"][n])
        for n, o in self.ctx.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
        for n, s in self.ctx.schedulers.items():
            s.load_state_dict(state["schedulers"][n])
        if self.ctx.scaler is not None and state.get("scaler"):
            self.ctx.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.ctx.micro_step = state.get("micro_step", 0)
        nonfinite = state.get("nonfinite") or {}
        self.nonfinite_total = int(nonfinite.get("total", 0))
        self.nonfinite_in_a_row = int(nonfinite.get("in_a_row", 0))
        self.task.load_extra_state(state.get("task", {}))
        self._record_config_changes(state.get("config"))
        ckpt_lib.set_rng_state(state["rng"][self.dist.rank])
        self.reporter.truncate_after(self.step)
        log.info("resumed: step %d, epoch %d, batch %d of the epoch", self.step, self.epoch, self.batch_in_epoch)
        return True

    def _record_config_changes(self, stored: Optional[Dict[str, Any]]) -> None:
        """Warn about every key whose value differs from the checkpoint's config (the run goes on
        with the new values) and append them to exp_dir/config_changes.log."""
        if stored is None:
            log.warning("%s: the checkpoint stores no config; cannot check it against this run's", self.exp_dir)
            return
        changes = config_changes(stored, self.config)
        if not changes:
            return
        lines = [f"{key}: {old!r} -> {new!r}" for key, old, new in changes]
        log.warning("resuming at step %d with a config that differs from the checkpoint's in %d key(s) "
                    "(continuing with the new values):\n  %s", self.step, len(changes), "\n  ".join(lines))
        if self.dist.is_main:
            with open(self.exp_dir / "config_changes.log", "a") as f:
                f.write(f"# resumed at step {self.step} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
                f.write("".join(line + "\n" for line in lines))

    # -- loops ----------------------------------------------------------------------------------
    def train_micro_batch(self, batch: Dict[str, Any]) -> tuple:
        """Run task.train_step on one micro-batch -> (values, boundary). Off the boundary forward
        and backward run inside DDP no_sync (no gradient all-reduce); on it, _finish_step."""
        boundary = self.ctx.is_boundary
        with self.ctx.no_sync_unless_boundary():
            values = self.task.train_step(batch, self.step, self.ctx)
        if boundary:
            self._finish_step(batch)
        self.ctx.micro_step = (self.ctx.micro_step + 1) % self.grad_accum
        return values, boundary

    def _finish_step(self, batch: Dict[str, Any]) -> None:
        """Boundary bookkeeping: apply (or, for a skipped step, drop) the codebook statistics of
        the window; count skipped steps and stop after max_nonfinite_steps in a row."""
        skipped = dict(self.ctx.skipped)
        self.ctx.skipped.clear()
        self.ctx._nonfinite_loss.clear()
        if not skipped:
            for quantizer in self._quantizers:
                quantizer.apply_pending_updates()
            self.nonfinite_in_a_row = 0
            return
        for quantizer in self._quantizers:
            quantizer.discard_pending_updates()
        self.nonfinite_total += 1
        self.nonfinite_in_a_row += 1
        why = ", ".join(f"{name}: non-finite {what}" for name, what in sorted(skipped.items()))
        utts = batch.get("utt_ids") or []
        shown = " ".join(utts[:8]) + (" ..." if len(utts) > 8 else "")
        log.warning("step %d skipped (%s; %d in a row, %d in total); last micro-batch: %s",
                    self.step + 1, why, self.nonfinite_in_a_row, self.nonfinite_total, shown or "-")
        if self.max_nonfinite > 0 and self.nonfinite_in_a_row >= self.max_nonfinite:
            raise RuntimeError(
                f"{self.exp_dir}: {self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
                f"gradient (steps {self.step + 2 - self.nonfinite_in_a_row}..{self.step + 1}; {why}; last "
                f"micro-batch: {shown or '-'}). Stopping: the weights are still those of the last good step. "
                "Check those utterances, lower optim.lr or raise grad_clip / max_nonfinite_steps; then "
                "re-run to resume from the last checkpoint.")

    def train(self) -> None:
        data_conf = self.config["data"]
        if not data_conf.get("train"):
            raise ValueError("no training data: pass --train_data DIR (or set data.train in the config)")
        log_interval = int(self.config["log_interval"])
        valid_interval = int(self.config["valid_interval"])
        save_interval = int(self.config["save_interval"])
        max_epochs = int(self.config["max_epochs"])
        self.reporter.start_clock(self.step)
        acc: Dict[str, List[float]] = {}
        use_tqdm = self.dist.is_main and sys.stderr.isatty()
        pbar = None
        if use_tqdm:
            from tqdm import tqdm

            pbar = tqdm(total=self.max_steps, initial=self.step, dynamic_ncols=True, desc="train")

        while self.step < self.max_steps and self.epoch < max_epochs:
            loader = self._build_loader(data_conf["train"], True, self.epoch, skip_batches=self.batch_in_epoch)
            for model in self.ctx.raw_models.values():
                model.train()
            iterator = iter(loader)
            while self.step < self.max_steps:
                batch = next(iterator, None)
                # Every rank leaves the epoch together, even with unequal shards.
                if any_rank_true(batch is None, self.dist.device):
                    break
                batch = _to_device(batch, self.dist.device)
                values, boundary = self.train_micro_batch(batch)
                for k, v in values.items():
                    acc.setdefault(k, []).append(float(v))
                self.batch_in_epoch += 1
                if not boundary:
                    continue
                if self.ctx.scaler is not None:
                    self.ctx.scaler.update()
                self.step += 1
                if pbar is not None:
                    pbar.update(1)
                if self.step % log_interval == 0 or self.step == self.max_steps:
                    self._log_train(acc)
                    acc = {}
                if self.config["data"].get("valid") and (self.step % valid_interval == 0 or self.step == self.max_steps):
                    self.validate()
                    for model in self.ctx.raw_models.values():
                        model.train()
                if self.step % save_interval == 0 or self.step == self.max_steps:
                    self.save()
            if self.step >= self.max_steps:
                break
            # epoch finished
            self.epoch += 1
            self.batch_in_epoch = 0
            log.info("epoch %d done at step %d", self.epoch, self.step)
        if pbar is not None:
            pbar.close()

    def _log_train(self, acc: Dict[str, List[float]]) -> None:
        values = {k: sum(v) / len(v) for k, v in acc.items()}
        values = all_reduce_mean_dict(values, self.dist.device)
        for name in self.ctx.optimizers:
            values[f"lr_{name}" if len(self.ctx.optimizers) > 1 else "lr"] = self.ctx.lr(name)
        for name, norm in self.ctx.grad_norms.items():
            values[f"grad_norm_{name}" if len(self.ctx.grad_norms) > 1 else "grad_norm"] = norm
        values["nonfinite_skipped"] = float(self.nonfinite_total)  # same on every rank
        self.reporter.log_metrics(self.step, "train", values)
        if self.dist.is_main:
            log.info(self.reporter.progress_line(self.step, self.max_steps, self.epoch, values))

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        data_dir = self.config["data"]["valid"]
        loader = self._build_loader(data_dir, False, 0)
        for model in self.ctx.raw_models.values():
            model.eval()
        sums: Dict[str, float] = {}
        count = 0
        t0 = time.time()
        iterator = iter(loader)
        first = True
        while True:
            batch = next(iterator, None)
            if any_rank_true(batch is None, self.dist.device):
                break
            batch = _to_device(batch, self.dist.device)
            with self.ctx.autocast():
                values = self.task.valid_step(batch, self.ctx)
            n = len(batch["utt_ids"])
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
            if first and self.dist.is_main:
                self.task.log_examples(batch, self.ctx, self.reporter, self.step)
            first = False
        means = {k: v / max(count, 1) for k, v in sums.items()}
        means = all_reduce_mean_dict(means, self.dist.device, weight=float(count))
        self.reporter.log_metrics(self.step, "valid", means)
        if self.dist.is_main:
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(means.items()))
            log.info("valid step %d (%d utts, %.1f s): %s", self.step, count, time.time() - t0, shown)
        return means

    def finish(self) -> None:
        if self.dist.is_main:
            out = self.exp_dir / "export"
            self.task.export(self.ctx, out)
        barrier()
        self.reporter.close()

    def run(self) -> None:
        self.prepare_data()
        self.setup()
        resumed = self.try_resume()
        if not resumed and self.dist.is_main:
            self.reporter.truncate_after(-1)  # fresh run in a dir without checkpoint: start clean
        if not resumed and self.config.get("valid_at_start") and self.config["data"].get("valid"):
            self.validate()  # the untrained baseline (eval mode: consumes no training RNG)
        if self.step >= self.max_steps:
            log.info("already trained to max_steps=%d", self.max_steps)
        else:
            self.train()
        self.finish()


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
