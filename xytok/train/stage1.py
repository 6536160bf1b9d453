"""Stage 1 ("X-shaped") training: codec generator + ASR branch on the quantised features.

Loss = w_asr * CE(LM transcript | adapter(post_rvq_adapter(zq)))
     + w_mel * multi-scale log-mel L1(output wav, input wav)
     + w_feat * L1(decoder 100 Hz features, input log-mel)      (optional)
     + w_commit * RVQ commitment
The quantizer's EMA / k-means / dead-code updates and quantizer dropout happen inside ResidualVQ
in train mode. Frozen modules (config `frozen:`; default the Whisper semantic encoder) are kept
in eval mode and run without autograd.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn as nn

from xytok.losses import MultiScaleMelLoss, feature_l1
from xytok.train.distributed import local_rank_zero_first
from xytok.train.task import Task

log = logging.getLogger("xytok.train")

# Codec submodules in data-flow order (the released attribute names).
CODEC_MODULES = ("semantic_encoder", "semantic_encoder_adapter", "acoustic_encoder", "pre_rvq_adapter",
                 "downsample", "quantizer", "post_rvq_adapter", "upsample", "acoustic_decoder", "vocos")


def build_codec(generator_params: Dict[str, Any]) -> nn.Module:
    from xytok.codec import build_codec as build

    return build({"generator_params": generator_params}).train()


class Stage1Model(nn.Module):
    """codec + asr in one module so DDP sees a single forward."""

    def __init__(self, codec: nn.Module, asr: nn.Module, frozen: List[str]):
        super().__init__()
        self.codec = codec
        self.asr = asr
        self.frozen = list(frozen)
        for name in self.frozen:
            module = self.get_submodule(name)
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:  # frozen parts always behave as at inference
            self.get_submodule(name).eval()
        return self

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor, texts: List[str] | None = None,
                run_asr: bool = True) -> Dict[str, Any]:
        # No graph is built through frozen towers: their params need no grad and mel needs none.
        enc = self.codec.tokenize(mel, mel_lengths)
        dec = self.codec.detokenize_from_zq(enc["zq"], enc["codes_lengths"])
        out = {"wav": dec["wav"], "feats": dec["mel_out"], "feat_lengths": dec["mel_out_lengths"],
               "codes": enc["codes"], "code_lengths": enc["codes_lengths"], "commit_loss": enc["commit_loss"],
               "rvq_stats": enc["quantizer_stats"], "post": dec["post_rvq"]}
        if run_asr and texts is not None:
            out["asr_loss"], out["asr_stats"] = self.asr(out["post"], out["code_lengths"], texts)
        return out


def _input_mel(batch: Dict[str, Any]):
    if "mel" in batch:
        return batch["mel"], batch["mel_lengths"]
    from xytok.frontend import log_mel

    return log_mel(batch["wav"], batch["wav_lengths"])


class Stage1Task(Task):
    default_config: Dict[str, Any] = {
        "whisper_init": None,          # HF name or local dir; null = random init (debug)
        "whisper_init_towers": ["semantic_encoder", "acoustic_encoder"],
        # State dict of a pre-trained semantic encoder (xytok.bin.train_semantic_ctc: the debug-size
        # stand-in for Whisper); applied after whisper_init.
        "semantic_init": None,
        "semantic_ctc_pretrain": None,  # settings for xytok.bin.train_semantic_ctc (read by the recipe)
        "frozen": ["codec.semantic_encoder"],
        "loss_weights": {"asr": 1.0, "mel": 1.0, "feat": 0.0, "commit": 1.0},
        "mel_resolutions": [[512, 128, 64], [1024, 256, 80], [2048, 512, 128]],
        "quantizer_dropout": None,     # override generator_params.quantizer_kwargs.quantizer_dropout
        # Dead-code threshold per frames seen: a code is dead when its share of the valid frames of
        # a step is below threshold_ema_dead_code (2) / this, the same at any world size x batch x
        # grad_accum. 48000 = the released quantizer at the paper's batch (32 GPUs x 4 items, each
        # padded to 30 s = 375 frames, which the official code counts; the paper's segment length is
        # unconfirmed). null = the absolute EMA count of 2 per step, whatever the batch.
        "dead_code_reference_frames": 48000,
        "valid_cer": True,             # greedy-decode every valid utterance and report CER
        "num_examples": 4,             # valid utterances shown (mel image + transcript)
        "asr": {"lm": {"type": "decoder"}, "tokenizer": {}, "adapter": {}},
    }

    # -- construction -------------------------------------------------------------------------
    def build_models(self) -> Dict[str, nn.Module]:
        conf = self.config
        gp = conf.get("generator_params")
        if not gp:
            raise ValueError("stage-1 config needs generator_params (the codec architecture, released YAML schema)")
        if conf.get("quantizer_dropout") is not None:
            gp["quantizer_kwargs"]["quantizer_dropout"] = float(conf["quantizer_dropout"])
        codec = build_codec(gp)
        codec.quantizer.set_dead_code_reference_frames(conf.get("dead_code_reference_frames"))
        if conf.get("whisper_init"):
            from xytok.whisper_init import load_whisper_encoder_into

            with local_rank_zero_first():  # one download per node; the other ranks read the cache
                load_whisper_encoder_into(codec, conf["whisper_init"], towers=tuple(conf["whisper_init_towers"]))
        if conf.get("semantic_init"):
            from xytok.checkpoint import load_state_strict

            path = conf["semantic_init"]
            if not Path(path).is_file():
                raise FileNotFoundError(f"semantic_init: {path} not found (recipe stage 5 pre-trains it with "
                                        "python -m xytok.bin.train_semantic_ctc)")
            load_state_strict(codec.semantic_encoder, torch.load(path, map_location="cpu", weights_only=True),
                              source=f"semantic_init {path}")
            log.info("semantic encoder initialised from %s", path)
        elif conf.get("semantic_ctc_pretrain"):
            log.warning("config has semantic_ctc_pretrain but no semantic_init: the semantic encoder starts "
                        "from random weights. Recipe stage 5 pre-trains it first; by hand, run python -m "
                        "xytok.bin.train_semantic_ctc and pass --semantic_init OUT/semantic_encoder.pth")
        from xytok.asr import build_asr_branch

        post_dim = gp["post_rvq_adapter_kwargs"]["output_dim"]
        with local_rank_zero_first():  # asr.lm.type hf fetches the LLM and its tokenizer
            asr = build_asr_branch(conf["asr"], in_dim=post_dim)
        model = Stage1Model(codec, asr, conf.get("frozen") or [])
        trainable_only = conf.get("trainable")
        if trainable_only:  # explicit allow-list: everything else frozen
            for pname, p in model.named_parameters():
                p.requires_grad_(any(pname.startswith(t + ".") for t in trainable_only) and p.requires_grad)
        self.mel_loss = MultiScaleMelLoss(conf["mel_resolutions"])
        return {"stage1": model}

    def init_from(self, models, state) -> None:
        model = models["stage1"]
        sources = state.get("models", state)
        if "stage1" in sources:  # a stage-1 training checkpoint: codec and ASR branch
            super().init_from(models, state)
            return
        # Released format ({'generator': sd}) or a stage-2 checkpoint: the codec only, every weight
        # of it (strict), and the ASR branch starts fresh (e.g. adapting to a new language).
        from xytok.checkpoint import codec_weights, load_state_strict

        weights = codec_weights(sources, "--init_param")
        # whisper_init ran first: compare its towers with the checkpoint's before these replace them
        towers = tuple(self.config.get("whisper_init_towers") or ()) if self.config.get("whisper_init") else ()
        same = {t: all(f"{t}.{k}" in weights and torch.equal(v, weights[f"{t}.{k}"].to(v.device, v.dtype))
                       for k, v in getattr(model.codec, t).state_dict().items()) for t in towers}
        load_state_strict(model.codec, weights, source="--init_param")
        log.info("--init_param: codec weights loaded (%s); the ASR branch keeps its fresh init",
                 "released format" if "models" not in state else "the codec of a training checkpoint")
        for tower, equal in same.items():
            log.info("--init_param: %s %s whisper_init %s; the checkpoint's weights are used", tower,
                     "equals" if equal else "differs from", self.config["whisper_init"])

    # -- steps --------------------------------------------------------------------------------
    def _losses(self, model, batch, ctx, run_asr=True):
        mel, mel_lengths = _input_mel(batch)
        # Items carry text only when the ASR loss is on (then they are whole utterances, see
        # xytok.data.dataset); reconstruction-only stage 1 (loss_weights.asr: 0) never runs the branch.
        run_asr = run_asr and bool(batch.get("has_text", True)) and float(self.config["loss_weights"].get("asr", 0)) > 0
        with ctx.autocast():
            out = model(mel, mel_lengths, batch["text"], run_asr=run_asr)
        w = self.config["loss_weights"]
        self.mel_loss.to(mel.device)
        wav = out["wav"].float()
        mel_l = self.mel_loss(wav, batch["wav"][:, : wav.shape[-1]], batch["wav_lengths"])
        values = {"mel_loss": mel_l, "commit_loss": out["commit_loss"].float()}
        total = w["mel"] * mel_l + w["commit"] * values["commit_loss"]
        if w.get("feat", 0):
            values["feat_loss"] = feature_l1(out["feats"], mel, mel_lengths)
            total = total + w["feat"] * values["feat_loss"]
        if run_asr:
            values["asr_loss"] = out["asr_loss"].float()
            values.update(out["asr_stats"])  # asr_acc (LM token accuracy) or ctc_acc (CTC head)
            total = total + w["asr"] * values["asr_loss"]
        values["loss"] = total
        return total, values, out

    def train_step(self, batch, step, ctx) -> Dict[str, float]:
        model = ctx.models["stage1"]
        total, values, out = self._losses(model, batch, ctx)
        ctx.backward(total)
        ctx.optimizer_step("stage1")
        result = {k: float(v.detach()) for k, v in values.items()}
        stats = out["rvq_stats"]
        for i in range(len(stats["codebook_usage"])):
            result[f"rvq/usage_l{i}"] = float(stats["codebook_usage"][i])
            result[f"rvq/perplexity_l{i}"] = float(stats["perplexity"][i])
            result[f"rvq/dead_codes_l{i}"] = float(stats["dead_codes"][i])
        return result

    @torch.no_grad()
    def valid_step(self, batch, ctx) -> Dict[str, float]:
        model = ctx.raw_models["stage1"]
        _, values, out = self._losses(model, batch, ctx)
        result = {k: float(v) for k, v in values.items()}
        if self.config.get("valid_cer") and batch.get("has_text", True):
            hyps = model.asr.greedy_decode(out["post"], out["code_lengths"])
            result["cer"] = _cer(batch["text"], hyps)
            self._last_hyps = hyps
        return result

    def log_examples(self, batch, ctx, reporter, step) -> None:
        model = ctx.raw_models["stage1"]
        n = min(int(self.config.get("num_examples", 4)), len(batch["utt_ids"]))
        if n == 0:
            return
        sub = {k: (v[:n] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
        mel, mel_lengths = _input_mel(sub)
        with torch.no_grad():
            out = model(mel, mel_lengths, run_asr=False)
            hyps = model.asr.greedy_decode(out["post"], out["code_lengths"])
        lines = [f"step {step} {u} REF: {r}\nstep {step} {u} HYP: {h}" for u, r, h in zip(sub["utt_ids"], sub["text"], hyps)]
        for line in lines:
            log.info("%s", line)
        with open(ctx.exp_dir / "asr_examples.txt", "a") as f:
            f.write("\n".join(lines) + "\n")
        reporter.add_text("valid/asr", "\n\n".join(lines), step)
        try:
            from xytok.frontend import log_mel

            recon, _ = log_mel(out["wav"][:1].float().cpu(), sub["wav_lengths"][:1].cpu())
            _plot_mels(reporter, mel[0, :, : int(mel_lengths[0])].cpu(), recon[0, :, : int(mel_lengths[0])],
                       sub["utt_ids"][0], step, ctx.exp_dir)
        except Exception as e:  # plotting must never kill a run
            log.warning("mel image failed: %s", e)

    # -- export -------------------------------------------------------------------------------
    def export(self, ctx, out_dir: Path) -> None:
        from xytok.pretrained import write_pretrained

        codec = ctx.raw_models["stage1"].codec
        write_pretrained(codec.state_dict(), self.config["generator_params"], out_dir)
        log.info("exported %s/config.yaml + model.safetensors + model.ckpt (released format)", out_dir)


def _cer(refs: List[str], hyps: List[str]) -> float:
    import jiwer

    refs = [r.lower() for r in refs]
    hyps = [h.lower() for h in hyps]
    return float(jiwer.cer(refs, hyps))


def _plot_mels(reporter, real, recon, utt, step, exp_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, m, title in zip(axes, (real, recon), ("input log-mel", "reconstruction (log-mel of output wav)")):
        ax.imshow(m.numpy(), origin="lower", aspect="auto", interpolation="none")
        ax.set_title(f"{utt}: {title}")
    fig.tight_layout()
    reporter.add_image("valid/mel", fig, step, Path(exp_dir) / "images" / f"mel_step{step}.png")
    plt.close(fig)
