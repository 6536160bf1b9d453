"""Training correctness at scale: RVQ EMA once per optimizer step, DDP no_sync around forward and
backward, dead-code threshold per frames seen, non-finite steps skipped, resume config check,
checkpoint averaging that keeps the newest codebooks, CTC accuracy, --init_param warnings.

A toy task (Linear -> ResidualVQ) runs through the real Trainer loop; only the data loader is an
in-memory list of batches.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from xytok.nn.rvq import ResidualVQ, VectorQuantizer
from xytok.train.distributed import DistInfo
from xytok.train.task import Task
from xytok.train.trainer import TRAINER_DEFAULTS, Trainer, deep_merge


# -- a toy task through the real trainer ----------------------------------------------------------
def _init_codebooks(rvq: ResidualVQ, seed: int = 1) -> ResidualVQ:
    g = torch.Generator().manual_seed(seed)
    for q in rvq.quantizers:
        q.codebook.copy_(torch.randn(q.codebook_size, q.codebook_dim, generator=g))
        q.embed_avg.copy_(q.codebook)
        q.cluster_size.fill_(1.0)
        q.inited.fill_(True)
    return rvq


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Conv1d(4, 6, 1)
        self.rvq = _init_codebooks(ResidualVQ(6, 3, 6, num_quantizers=2, codebook_size=8, codebook_dim=3,
                                              decay=0.8, threshold_ema_dead_code=0))

    def forward(self, x):
        h = self.lin(x)
        zq, _, commit, _ = self.rvq(h)
        return (zq - h.detach()).pow(2).mean() + commit


class ToyTask(Task):
    def build_models(self):
        return {"toy": ToyModel()}

    def train_step(self, batch, step, ctx):
        with ctx.autocast():
            loss = ctx.models["toy"](batch["x"])
        loss = loss * batch["scale"]  # scale = NaN injects a non-finite loss
        if batch.get("nan_grad"):  # finite loss (0), NaN gradient (d sqrt(0*w) = inf * 0)
            loss = loss + (ctx.models["toy"].module if hasattr(ctx.models["toy"], "module")
                           else ctx.models["toy"]).lin.weight.sum().mul(0).abs().sqrt()
        ctx.backward(loss)
        ctx.optimizer_step("toy")
        return {"loss": float(loss.detach())}

    def valid_step(self, batch, ctx):
        return {}


class ListTrainer(Trainer):
    """The real Trainer with its loader replaced by an in-memory list of batches."""

    batches: list = []

    def _build_loader(self, data_dir, train, epoch, skip_batches=0, *args, **kwargs):
        return list(self.batches)[skip_batches:]


def _batch(seed, scale=1.0, **extra):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(3, 4, 5, generator=g), "scale": torch.tensor(scale),
            "utt_ids": [f"utt{seed}-{i}" for i in range(3)], **extra}


def _config(**over):
    conf = {"max_steps": 2, "grad_accum": 1, "log_interval": 1, "save_interval": 1000, "tensorboard": False,
            "data": {"train": "in-memory", "valid": None}, "optim": {"type": "adamw", "lr": 1e-2},
            "scheduler": {"type": "constant", "warmup_steps": 0}}
    return deep_merge(deep_merge(TRAINER_DEFAULTS, conf), over)


def _trainer(tmp_path, batches, dist_info=None, **over):
    config = _config(**over)
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    trainer = ListTrainer(config, tmp_path, ToyTask(config, tmp_path), dist_info or DistInfo())
    trainer.batches = batches
    trainer.setup()
    return trainer


def _rvq_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("rvq.quantizers")}


# -- EMA once per optimizer step -----------------------------------------------------------------
def _tiny_rvq(**kw):
    torch.manual_seed(0)
    return _init_codebooks(ResidualVQ(6, 3, 6, num_quantizers=2, codebook_size=8, codebook_dim=3, decay=0.8,
                                      threshold_ema_dead_code=kw.pop("threshold", 2), **kw)).train()


def test_deferred_update_of_two_micro_batches_equals_one_big_batch():
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(2, 6, 7, generator=g), torch.randn(3, 6, 7, generator=g)
    l1, l2 = torch.tensor([7, 4]), torch.tensor([5, 7, 2])
    big = _tiny_rvq()
    torch.manual_seed(5)  # dead-code replacement draws vectors: the same draws in both runs
    big(torch.cat([x1, x2]), torch.cat([l1, l2]))

    acc = _tiny_rvq()
    acc.defer_updates = True
    before = {k: v.clone() for k, v in acc.state_dict().items()}
    acc(x1, l1)
    acc(x2, l2)
    for k, v in acc.state_dict().items():  # nothing moves inside the accumulation window
        assert torch.equal(v, before[k]), k
    torch.manual_seed(5)
    replaced = acc.apply_pending_updates()
    assert replaced > 0 and not acc.has_pending_updates
    for k, v in big.state_dict().items():
        torch.testing.assert_close(acc.state_dict()[k], v, rtol=1e-6, atol=1e-6, msg=k)


def test_deferred_update_of_one_micro_batch_is_bit_identical():
    x, lengths = torch.randn(3, 6, 9), torch.tensor([9, 3, 6])
    now = _tiny_rvq()
    torch.manual_seed(7)
    now(x, lengths)
    later = _tiny_rvq()
    later.defer_updates = True
    later(x, lengths)
    torch.manual_seed(7)
    later.apply_pending_updates()
    for k, v in now.state_dict().items():
        assert torch.equal(later.state_dict()[k], v), k


def test_trainer_applies_codebook_ema_once_per_optimizer_step(tmp_path):
    b1, b2 = _batch(1), _batch(2)
    trainer = _trainer(tmp_path, [b1, b2], grad_accum=2, max_steps=1)
    trainer.train()
    assert trainer.step == 1
    ref = ToyModel().train()  # the same init; one EMA step on both micro-batches
    with torch.no_grad():
        h = ref.lin(torch.cat([b1["x"], b2["x"]]))
    with torch.enable_grad():
        ref.rvq(h)
    got = _rvq_buffers(trainer.ctx.raw_models["toy"])
    for k, v in _rvq_buffers(ref).items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-6, msg=k)


# -- DDP: no gradient all-reduce off the boundary -------------------------------------------------
def _ddp_worker(rank, store, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        batches = [_batch(10 * rank + i) for i in range(4)]
        trainer = _trainer(Path(out_dir), batches, DistInfo(rank=rank, world_size=2), grad_accum=2, max_steps=2)
        seen = []

        def counting_hook(state, bucket):
            seen.append(trainer.ctx.micro_step)
            return allreduce_hook(None, bucket)

        trainer.ctx.models["toy"].register_comm_hook(None, counting_hook)
        trainer.train()
        params = [p.detach().clone() for p in trainer.ctx.raw_models["toy"].parameters()]
        torch.save({"seen": seen, "params": params, "step": trainer.step}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_all_reduces_gradients_only_on_the_accumulation_boundary(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in results:
        assert r["step"] == 2
        # micro_step 1 = the boundary micro-batch of a window of 2; one bucket per step
        assert r["seen"] and set(r["seen"]) == {1}, f"gradient all-reduce off the boundary: {r['seen']}"
        assert len(r["seen"]) == 2
    for a, b in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(a, b)


# -- dead codes per frames seen -------------------------------------------------------------------
def _replaced_codes(reference_frames, copies):
    """One training forward of an 8-code layer over `copies` x the same 40 frames; which codes
    were replaced (a replaced codeword is one of the batch vectors)."""
    torch.manual_seed(0)
    q = VectorQuantizer(3, 8, 3, decay=0.5, threshold_ema_dead_code=2, dead_code_reference_frames=reference_frames)
    centres = torch.eye(3).repeat(3, 1)[:8] * torch.arange(1, 9).float().unsqueeze(1)
    q.codebook.copy_(centres)
    q.embed_avg.copy_(centres)
    q.inited.fill_(True)
    # code usage per 40 frames: 0-5 about 6.5 each, code 6 once, code 7 never
    usage = [7, 7, 7, 6, 6, 6, 1, 0]
    frames = torch.cat([centres[i].repeat(n, 1) for i, n in enumerate(usage)])
    frames = frames + 0.01 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(1))
    q.cluster_size.copy_(torch.tensor(usage, dtype=torch.float32) * copies)  # the EMA at this batch
    q.embed_avg.copy_(centres * q.cluster_size.unsqueeze(1))
    batch = frames.repeat(copies, 1).t().unsqueeze(0)  # (1, 3, 40 * copies)
    q(batch, update=True)
    return {i for i in range(8) if (frames - q.codebook[i]).norm(dim=1).min() < 1e-6}


def test_dead_code_decision_does_not_depend_on_the_batch():
    # 40 frames per step: the reference batch, so the released count (2) applies: codes 6 and 7
    assert _replaced_codes(40, copies=1) == {6, 7}
    assert _replaced_codes(40, copies=2) == {6, 7}
    assert _replaced_codes(40, copies=4) == {6, 7}
    # the absolute count (null) changes its decision with the batch: code 6 survives at 2x
    assert _replaced_codes(None, copies=1) == {6, 7}
    assert _replaced_codes(None, copies=2) == {7}


def test_replaced_codes_do_not_inflate_the_frame_count():
    # Every code dead at every step (reference far below the batch): the replaced codes' counts must
    # not feed the next step's threshold. Taking F from cluster_size.sum() grew it by K*2/R = 1.6x per
    # step here, to inf within a few hundred steps (seen in the mini recipe as NaN at step 350).
    torch.manual_seed(0)
    q = VectorQuantizer(3, 16, 3, decay=0.99, threshold_ema_dead_code=2, dead_code_reference_frames=20)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        q(torch.randn(1, 3, 40, generator=gen), update=True)
    assert torch.isfinite(q.codebook).all() and torch.isfinite(q.cluster_size).all()
    assert float(q.cluster_size.sum()) < 16 * 2 * 40 / 20 + 40, "cluster sizes stay on the scale of a step's frames"


def test_stage1_sets_the_dead_code_reference_from_its_config():
    from xytok.train.stage1 import Stage1Task

    assert Stage1Task.default_config["dead_code_reference_frames"] == 48000
    with pytest.raises(ValueError, match="dead_code_reference_frames"):
        ResidualVQ(6, 3, 6, num_quantizers=1, codebook_size=4, codebook_dim=3).set_dead_code_reference_frames(0)


# -- non-finite steps -----------------------------------------------------------------------------
def _state_after(trainer):
    model = trainer.ctx.raw_models["toy"]
    opt = trainer.ctx.optimizers["toy"].state_dict()
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [s["step"].item() for s in opt["state"].values()],
            trainer.ctx.schedulers["toy"].last_epoch)


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_nonfinite_step_is_skipped_counted_and_logged(tmp_path, caplog, poison):
    good1, good2 = _batch(1), _batch(3)
    bad = _batch(2, scale=float("nan")) if poison == "loss" else _batch(2, nan_grad=True)
    with caplog.at_level(logging.WARNING, logger="xytok.train"):
        run = _trainer(tmp_path / "run", [good1, bad, good2], max_steps=3)
        run.train()
    ref = _trainer(tmp_path / "ref", [good1, good2], max_steps=2)
    ref.train()
    (sd, opt_steps, sched), (sd_ref, opt_steps_ref, sched_ref) = _state_after(run), _state_after(ref)
    for k, v in sd_ref.items():  # weights, codebooks and EMA as if the bad batch never came
        assert torch.equal(sd[k], v), k
        assert torch.isfinite(sd[k].float()).all(), k
    assert opt_steps == opt_steps_ref == [2.0] * len(opt_steps) and sched == sched_ref == 2
    assert run.step == 3 and run.nonfinite_total == 1 and run.nonfinite_in_a_row == 0
    assert f"step 2 skipped (toy: non-finite {poison}" in caplog.text and "utt2-0" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_skipped"] for r in rows if r.get("split") == "train"] == [0.0, 1.0, 1.0]


def test_nonfinite_steps_in_a_row_stop_the_run(tmp_path):
    batches = [_batch(1)] + [_batch(i, scale=float("inf")) for i in range(2, 8)]
    trainer = _trainer(tmp_path, batches, max_steps=7, max_nonfinite_steps=3)
    with pytest.raises(RuntimeError, match=r"3 optimizer steps in a row had a non-finite loss.*utt4-0"):
        trainer.train()
    assert trainer.step == 3 and trainer.nonfinite_total == 3


# -- resume compares the config -------------------------------------------------------------------
def test_resume_warns_about_and_records_every_config_change(tmp_path, caplog):
    first = _trainer(tmp_path, [_batch(1)], max_steps=1)
    first.train()  # saves at max_steps
    old_batch = TRAINER_DEFAULTS["data"]["max_batch_size"]
    changed = {"optim": {"lr": 5e-3}, "grad_clip": 0.5, "data": {"max_batch_size": old_batch + 1, "new_key": 1}}
    again = _trainer(tmp_path, [_batch(1), _batch(2)], max_steps=2, **changed)
    with caplog.at_level(logging.WARNING, logger="xytok.train"):
        assert again.try_resume()
    for line in ("optim.lr: 0.01 -> 0.005", "grad_clip: 1.0 -> 0.5", f"data.max_batch_size: {old_batch} -> {old_batch + 1}",
                 "data.new_key: '<absent>' -> 1"):
        assert line in caplog.text
        assert line in (tmp_path / "config_changes.log").read_text()
    assert "5 key(s)" in caplog.text and "max_steps: 1 -> 2" in caplog.text
    again.train()  # its checkpoint now stores the new config: resuming it again changes nothing
    caplog.clear()
    same = _trainer(tmp_path, [_batch(1), _batch(2)], max_steps=2, **changed)
    with caplog.at_level(logging.WARNING, logger="xytok.train"):
        assert same.try_resume()
    assert "differs" not in caplog.text


# -- average_checkpoints --------------------------------------------------------------------------
def test_average_checkpoints_keeps_the_newest_codebooks_and_exports(tmp_path):
    from test_train_stage1 import tiny_generator_params

    from xytok import load_codec
    from xytok.bin.average_checkpoints import main as average_main
    from xytok.bin.pack_model import build_pack
    from xytok.codec import build_codec

    params = tiny_generator_params()
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    (exp / "config.yaml").write_text(yaml.safe_dump({"task": "stage1", "generator_params": params}))
    states = []
    for step, seed in ((10, 0), (20, 1)):
        torch.manual_seed(seed)
        codec = build_codec(params)
        codec.quantizer.init_codebooks(torch.randn(2, 128, 6))
        sd = {f"codec.{k}": v for k, v in codec.state_dict().items()}
        sd["asr.head.weight"] = torch.randn(3, 3)
        states.append(sd)
        torch.save({"models": {"stage1": sd}, "step": step}, exp / "checkpoints" / f"step{step}.pth")
    out = tmp_path / "ave.pth"
    assert average_main(["--exp_dir", str(exp), "--last", "2", "--out", str(out)]) == 0
    avg = torch.load(out, weights_only=False)["models"]["stage1"]
    old, new = states
    for i in range(2):
        for b in ("codebook", "cluster_size", "embed_avg", "inited"):
            k = f"codec.quantizer.quantizers.{i}.{b}"
            assert torch.equal(avg[k], new[k]), k
    for k in ("codec.quantizer.input_proj.weight_v", "asr.head.weight", "codec.vocos.head.out.weight"):
        if k in new:
            torch.testing.assert_close(avg[k], (old[k] + new[k]) / 2)
    assert average_main(["--exp_dir", str(exp), "--last", "2", "--out", str(out),
                         "--export_dir", str(tmp_path / "ave" / "export")]) == 0
    codec = load_codec(tmp_path / "ave" / "export" / "config.yaml", tmp_path / "ave" / "export" / "model.ckpt")
    assert torch.equal(codec.quantizer.quantizers[1].codebook, new["codec.quantizer.quantizers.1.codebook"])
    build_pack(tmp_path / "ave", tmp_path / "packed", None)
    assert (tmp_path / "packed" / "model.ckpt").is_file()
    load_codec(tmp_path / "packed" / "config.yaml", tmp_path / "packed" / "model.ckpt")


# -- CTC accuracy and --init_param warnings -------------------------------------------------------
def test_ctc_acc_is_one_minus_unit_error_rate():
    from xytok.asr.ctc import CTCASRHead, edit_distance

    class CharTok:
        pad_id = 0
        num_pieces = 5

        def encode(self, text):
            return ["abc".index(c) + 1 for c in text]

    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [2, 2]) == 2
    head = CTCASRHead(4, CharTok(), d_model=8, num_layers=0, num_heads=1, ffn_dim=8, upsample=1, dropout=0.0)
    with torch.no_grad():  # output = input: frame t emits the class of its one-hot input
        head.input_proj.weight.copy_(torch.eye(8, 4))
        head.input_proj.bias.zero_()
        head.norm.weight.fill_(1.0)
        head.norm.bias.zero_()
        head.output.weight.copy_(torch.eye(5, 8) * 10)
        head.output.bias.zero_()
    frames = torch.zeros(1, 4, 4)
    for t, c in enumerate([1, 0, 2, 3]):  # emits "a", blank, "b", "c" -> "abc"
        frames[0, c, t] = 5.0
    _, stats = head(frames, torch.tensor([4]), ["abc"])
    assert float(stats["ctc_acc"]) == pytest.approx(1.0)
    _, stats = head(frames, torch.tensor([4]), ["bca"])  # every label occurs in it: old metric said 1
    assert float(stats["ctc_acc"]) == pytest.approx(1 - 2 / 3)
    _, stats = head(frames, torch.tensor([4]), ["a"])  # 2 insertions on 1 unit: clipped at 0
    assert float(stats["ctc_acc"]) == 0.0 and "asr_acc" not in stats


def test_init_param_reports_missing_and_unexpected_keys_as_warnings(tmp_path, caplog):
    task = ToyTask(_config(), tmp_path)
    models = task.build_models()
    sd = dict(models["toy"].state_dict())
    sd.pop("lin.bias")
    sd["extra.weight"] = torch.zeros(1)
    with caplog.at_level(logging.INFO, logger="xytok.train"):
        task.init_from(models, {"models": {"toy": sd}})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 keys missing" in m and "lin.bias" in m for m in warnings)
    assert any("1 unexpected keys" in m and "extra.weight" in m for m in warnings)
