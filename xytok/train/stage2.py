"""Stage 2 ("Y-shaped") post-training: GAN fine-tuning of the decoder with the token stream frozen.

Starting from a stage-1 export (or any released-format codec checkpoint, via --init_param), the
whole encoder side -- semantic/acoustic encoders, their adapters, pre_rvq_adapter, downsample and
the quantizer -- is frozen: eval mode even while training, no EMA codebook updates, no gradients,
run under torch.no_grad. So every input maps to exactly the same codes before and after stage 2,
and the text alignment learnt in stage 1 is kept. upsample, acoustic_decoder and vocos (and, if
`train_post_rvq_adapter: true`, post_rvq_adapter) learn to turn those codes into better audio with

    L_G = mel_weight * L_mel(multi-scale) + adv_weight * L_adv + feat_match_weight * L_fm
    L_D = LSGAN (or hinge) loss of MPD + MSD + MS-STFTD on real vs generated audio

L_adv, L_fm and L_D are summed over the sub-discriminators (and FM's layers) by default, as in
HiFi-GAN / DAC; `loss.gan_reduction: mean` averages them (xytok.gan.losses has the formulas).

The ASR branch of stage 1 is dropped. Each step runs the discriminator update, then the generator
update (discriminators join at `disc_start_step`; before that the generator sees the mel loss only).

post_rvq_adapter is frozen by default: the paper only names the acoustic decoder (+ Vocos) as
trainable in stage 2, and the released code groups post_rvq_adapter with the shared RVQ block.

Output rate (24/32 kHz decoders, as the authors' MOSS-TTSD tokenizers): `generator_overrides` sets
the released TTSD rate fields (output_sample_rate, decoder_upsample_rate) and the Vocos n_fft /
hop_size. The encoder still sees 16 kHz: the data dir holds audio at the output rate R (recipe
stage 6 dumps dump/raw_<R>), each item is the target at R and its 16 kHz encoder input is the
same utterance of the 16 kHz dump (named by the dir's `encoder_input` file), else the target
resampled with xytok.audio.resample (xytok.data.dataset). The mel loss (default resolutions scaled by R/16k,
mel bands up to R/2), the discriminator windows (set in the config) and disc_segment_seconds work
at R. The Vocos ISTFT head of the new rate starts from the 16 kHz one (`vocos_head_init: extend`):
with n_fft/hop scaled by R/16k the bins keep their 25 Hz spacing, so the old rows are copied
(log-magnitude + log(R/16k) for the longer inverse FFT) and the bins above 8 kHz start silent: at
step 0 the decoder outputs the 16 kHz decoder's audio at R; `fresh` keeps a random head.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn as nn
import yaml

from xytok.checkpoint import codec_weights
from xytok.gan import Discriminators, feature_matching_loss, get_adversarial_losses
from xytok.gan.losses import check_reduction
from xytok.losses import DEFAULT_RESOLUTIONS, MultiScaleMelLoss, scaled_resolutions
from xytok.pretrained import resolve_rates, write_pretrained
from xytok.train.config import deep_merge
from xytok.train.optim import build_optimizer
from xytok.train.task import Task

log = logging.getLogger("xytok.train")
SAMPLE_RATE = 16000  # the encoder's input rate


def new_nfft_expected(old_nfft: int, ratio: float) -> int:
    """n_fft of the same window duration at `ratio` times the rate (bins keep their spacing)."""
    return int(round(old_nfft * ratio))


def config_output_rate(path: str) -> int:
    """Output rate a stage-2 training YAML asks for (recipe stage 6 picks the dump with it):
    generator_overrides' rate fields / Vocos hop over generator_params (or 16000 when the config
    leaves the decoder as it is)."""
    with open(path) as f:
        conf = yaml.safe_load(f) or {}
    over = conf.get("generator_overrides") or {}
    if isinstance(over.get("output_sample_rate"), int):
        return int(over["output_sample_rate"])
    base = conf.get("generator_params") or {}
    if not base and not over:
        return SAMPLE_RATE
    # the legacy one-rate `sample_rate` of a 16 kHz base follows the overridden decoder (as in training)
    merged = {k: v for k, v in deep_merge(base, over).items() if k != "sample_rate" or "sample_rate" in over}
    return resolve_rates(merged, path)["output_sample_rate"]

# Always frozen in stage 2: everything that decides the codes.
TOKENIZER_MODULES = ("semantic_encoder", "semantic_encoder_adapter", "acoustic_encoder",
                     "pre_rvq_adapter", "downsample", "quantizer")
DECODER_MODULES = ("post_rvq_adapter", "upsample", "acoustic_decoder", "vocos")


class Stage2Generator(nn.Module):
    """The stage-2 generator, composed of a codec's parts: frozen tokenizer -> codes -> trainable
    decoder.

    It registers the codec's own submodules under their own names, in the same order, so its
    state_dict() is exactly the codec's (released key set: exports and training checkpoints keep
    the released names). The codec object is kept, unregistered, for its tokenize / decode_codes /
    detokenize_from_zq: both share the same module objects, so the codec sees every update.

    * train(mode) keeps the frozen modules in eval mode whatever the trainer asks;
    * forward(mel, mel_lengths) = frozen tokenizer (no_grad) -> codes -> trainable decoder.
    """

    def __init__(self, codec: nn.Module, train_post_rvq_adapter: bool = False):
        super().__init__()
        for name, module in codec.named_children():
            self.add_module(name, module)
        object.__setattr__(self, "_codec", codec)  # not a submodule: its parameters are ours already
        self.generator_params = getattr(codec, "generator_params", None)
        self.frozen_modules = TOKENIZER_MODULES + (() if train_post_rvq_adapter else ("post_rvq_adapter",))
        for name in self.frozen_modules:
            module = getattr(self, name)
            module.requires_grad_(False)
            if hasattr(module, "freeze"):  # ResidualVQ: inference behaviour even in train mode
                module.freeze()
        for name in DECODER_MODULES:
            if name not in self.frozen_modules:
                getattr(self, name).requires_grad_(True)
        self.train(codec.training)

    @property
    def codec(self) -> nn.Module:
        """The codec these parts came from (same modules, so the same weights)."""
        return self._codec

    def train(self, mode: bool = True):
        super().train(mode)
        self._codec.training = mode
        for name in self.frozen_modules:
            getattr(self, name).eval()
        return self

    def tokenize(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> dict:
        return self._codec.tokenize(mel, mel_lengths)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self._codec.decode_codes(codes)

    def detokenize_from_zq(self, zq: torch.Tensor, codes_lengths: torch.Tensor) -> dict:
        return self._codec.detokenize_from_zq(zq, codes_lengths)

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            tok = self.tokenize(mel, mel_lengths)
            # Decode from the codes exactly as inference does (decode_codes), not from the
            # straight-through zq of tokenize (they differ by float rounding, ~1e-7).
            zq = self.decode_codes(tok["codes"])
        out = self.detokenize_from_zq(zq, tok["codes_lengths"])
        wav = out["wav"]
        if wav.dim() == 3:
            wav = wav.squeeze(1)
        return {"wav": wav, "mel_out": out.get("mel_out"), "codes": tok["codes"],
                "codes_lengths": tok["codes_lengths"]}


def make_stage2_codec(codec: nn.Module, train_post_rvq_adapter: bool = False) -> Stage2Generator:
    """The stage-2 generator built from `codec` (whose token side it freezes); see Stage2Generator."""
    return Stage2Generator(codec, train_post_rvq_adapter)


def _check_quantizer_trained(codec: nn.Module, where: str) -> None:
    not_inited = [i for i, q in enumerate(codec.quantizer.quantizers)
                  if hasattr(q, "inited") and not bool(q.inited.all())]
    if not_inited:
        raise ValueError(
            f"stage 2: {where}: RVQ layers {not_inited} were never initialised (inited=False), so "
            "the frozen quantizer would map everything to code 0. Start stage 2 from a trained "
            "codec: --init_param <stage-1 exp>/export/model.ckpt (or a released model.ckpt).")


class Stage2Task(Task):
    default_config: Dict[str, Any] = {
        "task": "stage2",
        # Codec architecture (released `generator_params` schema), or `generator_config`: a
        # released-format config.yaml (e.g. <stage-1 exp>/export/config.yaml), which wins if set.
        "generator_params": None,
        "generator_config": None,
        # Deep-merged onto the architecture above: decoder-side changes for this stage-2 run (e.g.
        # vocos_kwargs n_fft/hop_size for a 24 kHz decoder, a streaming acoustic decoder). Only
        # decoder sections may change: the tokenizer side must stay the model that made the codes.
        "generator_overrides": None,
        "train_post_rvq_adapter": False,
        "disc_start_step": 0,
        # Seconds of audio the discriminators see per item (a random window, the same for the
        # real and generated signal; as HiFi-GAN's segment). The generator still decodes whole
        # training crops, so its context matches stage 1; null = the whole crop.
        "disc_segment_seconds": None,
        "discriminators": {
            "mpd": {"enabled": True, "periods": [2, 3, 5, 7, 11]},
            "msd": {"enabled": True, "num_scales": 3},
            "mstftd": {"enabled": True, "n_ffts": [1024, 2048, 512], "hop_lengths": [256, 512, 128],
                       "win_lengths": [1024, 2048, 512]},
        },
        "loss": {
            "adversarial": "lsgan",  # lsgan | hinge
            # sum | mean over sub-discriminators (and FM layers), see xytok.gan.losses: sum is
            # HiFi-GAN's / DAC's, which the weights below come from; mean is K times weaker.
            "gan_reduction": "sum",
            "mel_weight": 15.0,
            "adv_weight": 1.0,
            "feat_match_weight": 2.0,
            # (n_fft, hop, n_mels) of the multi-scale mel loss at the output rate; null = xytok.losses
            # defaults (n_fft and hop scaled by output rate / 16 kHz)
            "mel_resolutions": None,
        },
        # Vocos ISTFT head of a decoder at another output rate: extend (from the 16 kHz head, see the
        # module docstring) | fresh (random)
        "vocos_head_init": "extend",
        "optim": {
            "generator": {"type": "adamw", "lr": 1.0e-5, "betas": [0.8, 0.99], "weight_decay": 0.0},
            "discriminator": {"type": "adamw", "lr": 1.0e-4, "betas": [0.8, 0.99], "weight_decay": 0.0},
        },
        "scheduler": {"type": "constant", "warmup_steps": 0},
        "data": {"require_text": False, "crop_seconds": 2.56},
        "log_examples": 2,  # validation utterances written as images/audio
    }

    def __init__(self, config: Dict[str, Any], output_dir: Path):
        super().__init__(config, output_dir)
        self.loss_conf = config.get("loss", {})
        adv = self.loss_conf.get("adversarial", "lsgan")
        self.d_loss_fn, self.g_loss_fn = get_adversarial_losses(adv)
        self.gan_reduction = check_reduction(self.loss_conf.get("gan_reduction", "sum"))
        log.info("stage 2: %s adversarial + feature-matching losses, %s over sub-discriminators "
                 "(loss.gan_reduction)", adv, self.gan_reduction)
        self.seed = int(config.get("seed", 0))
        self.generator_params = self._resolve_generator_params()
        self._log_streaming()
        rates = resolve_rates(self.generator_params, "stage 2 generator_params")
        self.output_rate = rates["output_sample_rate"]
        res = self.loss_conf.get("mel_resolutions") or scaled_resolutions(DEFAULT_RESOLUTIONS, self.output_rate)
        self.mel_loss = MultiScaleMelLoss(res, sample_rate=self.output_rate)
        self.disc_start_step = int(config.get("disc_start_step", 0))
        seg = config.get("disc_segment_seconds")
        self.disc_segment = int(round(float(seg) * self.output_rate)) if seg else None
        self._checked_init = False
        self._logged_rates = False
        if self.output_rate != SAMPLE_RATE:
            log.info("stage 2: decoder output %d Hz (vocos n_fft %s, hop %s; %d samples per code frame), encoder "
                     "input %d Hz; mel loss at %d Hz: %s", self.output_rate,
                     self.generator_params["vocos_kwargs"].get("n_fft"),
                     self.generator_params["vocos_kwargs"].get("hop_size"), rates["decoder_upsample_rate"],
                     rates["input_sample_rate"], self.output_rate, [list(map(int, r)) for r in res])

    # -- construction -------------------------------------------------------------------------
    def _resolve_generator_params(self) -> Dict[str, Any]:
        """The base architecture (`_base_generator_params`) with `generator_overrides` merged in."""
        params = self._base_generator_params()
        overrides = self.config.get("generator_overrides") or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"generator_overrides must be a mapping of generator_params sections, got {overrides!r}")
        allowed = {f"{m}_kwargs" for m in DECODER_MODULES}
        bad = sorted(k for k in overrides if k.endswith("_kwargs") and k not in allowed)
        if bad:
            raise ValueError(f"generator_overrides: {', '.join(bad)} would change the tokenizer side, which "
                             f"stage 2 keeps frozen (the codes must not change); only {sorted(allowed)} "
                             "and top-level rate fields may be overridden")
        for k, v in overrides.items():
            if k.endswith("_kwargs") and k not in params:
                raise ValueError(f"generator_overrides.{k}: no such section in generator_params")
            if k.endswith("_kwargs") and not isinstance(v, dict):
                raise ValueError(f"generator_overrides.{k} must be a mapping, got {v!r}")
        if overrides:
            log.info("stage 2: generator_overrides applied: %s", overrides)
        merged = deep_merge(params, overrides)
        if "sample_rate" in params and "sample_rate" not in overrides and overrides:
            # the legacy one-rate field of a 16 kHz stage-1 config follows the overridden decoder
            rates = resolve_rates({k: v for k, v in merged.items() if k != "sample_rate"},
                                  "stage 2 generator_params (generator_config + generator_overrides)")
            if merged["sample_rate"] != rates["output_sample_rate"]:
                log.info("stage 2: sample_rate %s -> %d (the decoder's output rate after generator_overrides)",
                         merged["sample_rate"], rates["output_sample_rate"])
                merged["sample_rate"] = rates["output_sample_rate"]
        return merged

    def _log_streaming(self) -> None:
        """A chunk-causal decoder (xytok.streaming): say its latency; its post-RVQ adapter should train."""
        from xytok.streaming import NotStreamableError, latency, spec_from_params

        try:
            lat = latency(spec_from_params(self.generator_params))
        except NotStreamableError:
            return
        log.info("stage 2: streaming decoder: chunk %d code frame(s), look-ahead %d: algorithmic latency %.0f ms",
                 lat["chunk_frames"], lat["lookahead_frames"], lat["algorithmic_latency_ms"])
        if not self.config.get("train_post_rvq_adapter", False):
            log.warning("stage 2: the post-RVQ adapter's attention is chunk-causal now but it stays frozen "
                        "(train_post_rvq_adapter: false); conf/train_stage2_streaming*.yaml train it")

    def _base_generator_params(self) -> Dict[str, Any]:
        """`generator_config` (the config.yaml of the model --init_param loads, e.g. recipe stage 6's
        <stage-1 exp>/export/config.yaml) wins over inline `generator_params`: it describes the
        checkpoint that is actually loaded, so configs need not duplicate the architecture."""
        path = self.config.get("generator_config")
        params = self.config.get("generator_params")
        if path:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
            if "generator_params" not in loaded:
                raise ValueError(f"{path}: no `generator_params` section (expected a released-format config.yaml)")
            if params and params != loaded["generator_params"]:
                log.warning("generator_config %s overrides the config's generator_params (they differ)", path)
            return loaded["generator_params"]
        if params:
            return copy.deepcopy(params)
        raise ValueError("stage 2 needs the codec architecture: set `generator_params` in the config or "
                         "`generator_config: <stage-1 exp>/export/config.yaml` (--generator_config)")

    def build_models(self) -> Dict[str, nn.Module]:
        from xytok.codec import load_codec

        codec = load_codec({"generator_params": copy.deepcopy(self.generator_params)})
        codec = make_stage2_codec(codec, bool(self.config.get("train_post_rvq_adapter", False)))
        discriminators = Discriminators(copy.deepcopy(self.config.get("discriminators")))
        return {"generator": codec, "discriminator": discriminators}

    def build_dataset(self, data_dir: str, config: Dict[str, Any], train: bool):
        """The default datasets at 16 kHz; at another output rate, items with `target_wav` at that rate
        and their 16 kHz encoder input (xytok.data.dataset)."""
        from xytok.data.dataset import build_dataset

        rate = None if self.output_rate == SAMPLE_RATE else self.output_rate
        dataset = build_dataset(data_dir, config, train, target_sample_rate=rate)
        if rate and not self._logged_rates:
            self._logged_rates = True
            if dataset.encoder_input is not None:
                src = f"the 16 kHz dump {dataset.encoder_input_dir}, as encode() sees it"
            elif dataset.dir_rate == rate:
                src = f"resampled from {rate}"
            else:
                src = f"resampled from {rate}, itself resampled from the {dataset.dir_rate} Hz dump"
            log.info("stage 2: encoder input %d Hz (%s), targets %d Hz (%s)", SAMPLE_RATE, src, rate, data_dir)
        return dataset

    def build_optimizers(self, models):
        optim_conf = self.config.get("optim", {})
        shared = {k: v for k, v in optim_conf.items() if not isinstance(v, dict)}
        out = {}
        for name, model in models.items():
            conf = dict(shared)
            conf.update(optim_conf.get(name) or {})
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError(f"stage 2: model {name!r} has no trainable parameters")
            out[name] = build_optimizer(params, conf)
        return out

    def init_from(self, models, state) -> None:
        """Load a released ckpt {'generator': sd} or a training checkpoint {'models': {...}}
        strictly into the codec: every tokenizer-side key must be there with its shape (a partial
        load would silently leave random weights in the frozen tokenizer). Decoder-side keys that
        `generator_overrides` changed (absent, or of another shape, e.g. a 24 kHz Vocos head) keep
        their fresh initialisation, listed in the log; without overrides every key must fit.
        Discriminators start fresh unless the checkpoint has them (a stage-2 checkpoint)."""
        sources = state.get("models", state)
        sd = codec_weights(sources, "--init_param")
        codec = models["generator"]
        own = codec.state_dict()
        may_differ = bool(self.config.get("generator_overrides"))
        decoder_key = lambda k: k.split(".", 1)[0] in DECODER_MODULES  # noqa: E731
        missing = sorted(set(own) - set(sd))
        reshaped = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
        fresh = [k for k in missing + reshaped if may_differ and decoder_key(k)]
        bad_missing = [k for k in missing if k not in fresh]
        if bad_missing:
            raise ValueError(f"--init_param: the checkpoint lacks {len(bad_missing)} codec weights, e.g. "
                             f"{bad_missing[:5]}; is it a model of this architecture (generator_params)?")
        bad_shape = [k for k in reshaped if k not in fresh]
        if bad_shape:
            raise ValueError("--init_param: codec weights do not fit this architecture: "
                             + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape[:5]))
        unexpected = sorted(set(sd) - set(own))
        if unexpected:
            log.warning("--init_param: ignoring %d unexpected keys that are not codec weights (e.g. %s)",
                        len(unexpected), unexpected[:3])
        extended = self._extend_vocos_head(sd, own, fresh)
        fresh = [k for k in fresh if k not in extended]
        if fresh:
            log.info("--init_param: %d decoder weights changed by generator_overrides start fresh: %s",
                     len(fresh), ", ".join(fresh[:8]) + (" ..." if len(fresh) > 8 else ""))
        try:
            codec.load_state_dict({k: (extended[k] if k in extended else own[k] if k in fresh else sd[k])
                                   for k in own}, strict=True)
        except RuntimeError as e:
            raise ValueError(f"--init_param: codec weights do not fit this architecture: {e}") from e
        if "discriminator" in sources:
            models["discriminator"].load_state_dict(sources["discriminator"])
            log.info("--init_param: discriminators loaded too")
        _check_quantizer_trained(codec, "--init_param")
        self._checked_init = True
        log.info("--init_param: codec loaded; frozen: %s", ", ".join(codec.frozen_modules))

    def _extend_vocos_head(self, sd, own, fresh) -> Dict[str, torch.Tensor]:
        """Initial ISTFT-head weights of a decoder at another rate, from the checkpoint's head
        (`vocos_head_init: extend`; module docstring). {} when not applicable (same head, `fresh`,
        or the two STFTs do not share bin spacing and hop duration)."""
        w_key, b_key = "vocos.head.out.weight", "vocos.head.out.bias"
        mode = self.config.get("vocos_head_init", "extend")
        if mode not in ("extend", "fresh"):
            raise ValueError(f"vocos_head_init must be extend or fresh, got {mode!r}")
        if mode == "fresh" or w_key not in fresh or w_key not in sd or b_key not in sd:
            return {}
        old_bins, new_bins = sd[w_key].shape[0] // 2, own[w_key].shape[0] // 2
        old_rate, new_rate = self._init_output_rate(), self.output_rate
        new_vocos = self.generator_params["vocos_kwargs"]
        old_nfft = 2 * (old_bins - 1)
        ratio = new_rate / old_rate
        if ratio <= 1 or 2 * (new_bins - 1) != new_nfft_expected(old_nfft, ratio) or \
                int(new_vocos.get("n_fft", 0)) != 2 * (new_bins - 1) or sd[w_key].shape[1] != own[w_key].shape[1]:
            log.info("--init_param: vocos head %d -> %d bins at %d -> %d Hz: no common bin grid, it starts fresh",
                     old_bins, new_bins, old_rate, new_rate)
            return {}
        w, b = own[w_key].clone(), own[b_key].clone()
        w[:old_bins], b[:old_bins] = sd[w_key][:old_bins], sd[b_key][:old_bins] + math.log(ratio)
        w[old_bins:new_bins] = 0.0
        b[old_bins:new_bins] = math.log(1e-5)  # silent above the old Nyquist
        w[new_bins:new_bins + old_bins], b[new_bins:new_bins + old_bins] = sd[w_key][old_bins:], sd[b_key][old_bins:]
        w[new_bins + old_bins:], b[new_bins + old_bins:] = 0.0, 0.0
        log.info("--init_param: vocos ISTFT head extended from %d Hz (n_fft %d) to %d Hz (n_fft %d): bins 0-%d Hz "
                 "copied (log-magnitude + log %.3g), %d-%d Hz start silent (vocos_head_init: extend)", old_rate,
                 old_nfft, new_rate, 2 * (new_bins - 1), old_rate // 2, ratio, old_rate // 2, new_rate // 2)
        out = {w_key: w, b_key: b}
        window = "vocos.head.istft.window"
        if window in fresh:
            out[window] = own[window]  # a Hann window of the new n_fft, as built
        return out

    def _init_output_rate(self) -> int:
        """Output rate of the model --init_param loads (its config before generator_overrides)."""
        return resolve_rates(self._base_generator_params(), "generator_config")["output_sample_rate"]

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _input_mel(batch):
        if "mel" in batch:
            return batch["mel"], batch["mel_lengths"]
        from xytok.frontend import log_mel

        return log_mel(batch["wav"], batch["wav_lengths"])

    @staticmethod
    def _aligned_targets(batch, wav_hat: torch.Tensor):
        """Reference and generated audio cut to a common length, zeroed past each item's end. The
        reference is `target_wav` (the output rate) when the batch has one, else the input wav."""
        ref, ref_lengths = (batch["target_wav"], batch["target_lengths"]) if "target_wav" in batch \
            else (batch["wav"], batch["wav_lengths"])
        n = min(wav_hat.shape[-1], ref.shape[-1])
        lengths = ref_lengths.to(wav_hat.device).clamp(max=n)
        mask = (torch.arange(n, device=wav_hat.device)[None, :] < lengths[:, None]).to(wav_hat.dtype)
        return ref[:, :n].to(wav_hat.device) * mask, wav_hat[:, :n] * mask, lengths

    def _disc_windows(self, wav: torch.Tensor, wav_hat: torch.Tensor, lengths: torch.Tensor, step: int):
        """Same random window of `disc_segment` samples from each reference/generated pair (inside
        the item's valid length where it is long enough). Drawn from (seed, step) so a resumed
        run sees the same windows."""
        seg = self.disc_segment
        if seg is None or seg >= wav.shape[-1]:
            return wav, wav_hat
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        room = (lengths.cpu() - seg).clamp(min=0)
        starts = (torch.rand(wav.shape[0], generator=gen) * (room + 1)).long().clamp(max=wav.shape[-1] - seg)
        idx = (starts[:, None] + torch.arange(seg)[None, :]).to(wav.device)
        return wav.gather(1, idx), wav_hat.gather(1, idx)

    def _first_step_checks(self, ctx) -> None:
        if self._checked_init:
            return
        _check_quantizer_trained(ctx.raw_models["generator"], "the model being trained")
        self._checked_init = True

    # -- steps --------------------------------------------------------------------------------
    def train_step(self, batch, step: int, ctx) -> Dict[str, float]:
        self._first_step_checks(ctx)
        generator, disc = ctx.models["generator"], ctx.models["discriminator"]
        disc_raw = ctx.raw_models["discriminator"]
        mel, mel_lengths = self._input_mel(batch)
        with ctx.autocast():
            out = generator(mel, mel_lengths)
        wav, wav_hat, lengths = self._aligned_targets(batch, out["wav"].float())
        self.mel_loss.to(wav.device)
        use_gan = step >= self.disc_start_step
        values: Dict[str, float] = {}

        if use_gan:
            wav_d, wav_hat_d = self._disc_windows(wav, wav_hat, lengths, step)
            # Discriminator: one forward over [real; fake] (one DDP forward per backward).
            batch_size = wav.shape[0]
            with ctx.autocast():
                logits, _ = disc(torch.cat([wav_d, wav_hat_d.detach()], dim=0))
            real_logits = [lg[:batch_size] for lg in logits]
            fake_logits = [lg[batch_size:] for lg in logits]
            loss_d = self.d_loss_fn(real_logits, fake_logits, reduction=self.gan_reduction)
            ctx.backward(loss_d, ["discriminator"])
            ctx.optimizer_step("discriminator")
            values["loss_d"] = loss_d.item()
            values["d_real"] = torch.stack([lg.float().mean() for lg in real_logits]).mean().item()
            values["d_fake"] = torch.stack([lg.float().mean() for lg in fake_logits]).mean().item()

        # Generator.
        loss_mel = self.mel_loss(wav_hat, wav, lengths)
        loss_g = float(self.loss_conf.get("mel_weight", 15.0)) * loss_mel
        if use_gan:
            # The raw (un-wrapped) discriminator with frozen parameters: the generator loss must
            # neither accumulate gradients into D nor trigger D's DDP gradient all-reduce.
            disc_raw.requires_grad_(False)
            try:
                with ctx.autocast():
                    with torch.no_grad():
                        _, real_fmaps = disc_raw(wav_d)
                    fake_logits, fake_fmaps = disc_raw(wav_hat_d)
                loss_adv = self.g_loss_fn(fake_logits, reduction=self.gan_reduction)
                loss_fm = feature_matching_loss(real_fmaps, fake_fmaps, reduction=self.gan_reduction)
            finally:
                disc_raw.requires_grad_(True)
            loss_g = (loss_g + float(self.loss_conf.get("adv_weight", 1.0)) * loss_adv
                      + float(self.loss_conf.get("feat_match_weight", 2.0)) * loss_fm)
            values["loss_adv"] = loss_adv.item()
            values["loss_fm"] = loss_fm.item()
        ctx.backward(loss_g, ["generator"])
        ctx.optimizer_step("generator")
        values["loss_mel"] = loss_mel.item()
        values["loss_g"] = loss_g.item()
        return values

    @torch.no_grad()
    def valid_step(self, batch, ctx) -> Dict[str, float]:
        mel, mel_lengths = self._input_mel(batch)
        out = ctx.raw_models["generator"](mel, mel_lengths)
        wav, wav_hat, lengths = self._aligned_targets(batch, out["wav"].float())
        self.mel_loss.to(wav.device)
        values = {"mel_distance": self.mel_loss(wav_hat, wav, lengths).item()}
        if self.disc_start_step <= ctx.step:
            logits, _ = ctx.raw_models["discriminator"](torch.cat([wav, wav_hat], dim=0))
            b = wav.shape[0]
            values["loss_d"] = self.d_loss_fn([lg[:b] for lg in logits], [lg[b:] for lg in logits],
                                              reduction=self.gan_reduction).item()
            values["loss_adv"] = self.g_loss_fn([lg[b:] for lg in logits], reduction=self.gan_reduction).item()
        return values

    @torch.no_grad()
    def log_examples(self, batch, ctx, reporter, step: int) -> None:
        """Log-mel images (reference vs stage-2 output) and the audio of the first utterances."""
        num = min(int(self.config.get("log_examples", 2)), len(batch["utt_ids"]))
        if num <= 0:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import soundfile as sf

        mel, mel_lengths = self._input_mel(batch)
        out = ctx.raw_models["generator"](mel[:num], mel_lengths[:num])
        sample_dir = Path(ctx.exp_dir) / "samples" / f"step{step}"
        sample_dir.mkdir(parents=True, exist_ok=True)
        spec = self.mel_loss.to(out["wav"].device).mels[len(self.mel_loss.mels) // 2]
        refs, ref_lengths = (batch["target_wav"], batch["target_lengths"]) if "target_wav" in batch \
            else (batch["wav"], batch["wav_lengths"])
        sr = self.output_rate
        for i in range(num):
            utt = batch["utt_ids"][i]
            n = int(min(ref_lengths[i], out["wav"].shape[-1]))
            ref = refs[i, :n].float().to(out["wav"].device)
            gen = out["wav"][i, :n].float()
            images = [spec(w[None])[0].cpu().numpy() for w in (ref, gen)]
            ref, gen = ref.cpu(), gen.cpu()
            fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
            for ax, title, image in zip(axes, ("reference", "stage 2"), images):
                ax.imshow(image, origin="lower", aspect="auto")
                ax.set_title(f"{utt}: {title}")
            fig.tight_layout()
            reporter.add_image(f"examples/{i}", fig, step,
                               Path(ctx.exp_dir) / "images" / f"step{step}_{utt}.png")
            plt.close(fig)
            sf.write(sample_dir / f"{utt}_ref.wav", ref.numpy(), sr)
            sf.write(sample_dir / f"{utt}_gen.wav", gen.clamp(-1, 1).numpy(), sr)
            if reporter.writer is not None:
                reporter.writer.add_audio(f"audio/{i}_gen", gen.clamp(-1, 1), step, sample_rate=sr)
                reporter.writer.add_audio(f"audio/{i}_ref", ref.clamp(-1, 1), step, sample_rate=sr)

    # -- export -------------------------------------------------------------------------------
    def export(self, ctx, out_dir: Path) -> None:
        """config.yaml (generator_params) + model.ckpt {'generator': state_dict} (released format)
        + the same weights as model.safetensors."""
        state = ctx.raw_models["generator"].state_dict()
        write_pretrained(state, self.generator_params, out_dir)
        log.info("exported stage-2 codec to %s (%d tensors)", out_dir, len(state))
