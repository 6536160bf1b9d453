"""Stage 2's generator is built by composition (no class swap) and keeps the codec's key set;
the trainer's config/optimizer API lives in train/config.py and train/optim.py."""
import ast
from pathlib import Path

import numpy as np
import torch

from golden import TINY_A
from xytok.codec import XYTokenizer, load_codec
from xytok.train.stage2 import DECODER_MODULES, TOKENIZER_MODULES, Stage2Generator, make_stage2_codec

PKG = Path(__file__).resolve().parents[1] / "xytok"


def _codec():
    return load_codec(str(TINY_A / "config.yaml"), str(TINY_A / "model.ckpt"))


def test_composed_generator_keeps_the_codec_state_dict():
    codec = _codec()
    keys = list(codec.state_dict())
    gen = make_stage2_codec(codec)
    assert type(gen) is Stage2Generator and type(codec) is XYTokenizer  # nothing re-classed
    assert gen.codec is codec
    # same keys in the same order, the very same tensors (exports keep the released names)
    assert list(gen.state_dict()) == keys
    assert all(gen.state_dict()[k].data_ptr() == v.data_ptr() for k, v in codec.state_dict().items())
    assert gen.generator_params == codec.generator_params
    frozen = TOKENIZER_MODULES + ("post_rvq_adapter",)
    assert gen.frozen_modules == frozen
    assert not any(p.requires_grad for n in frozen for p in getattr(gen, n).parameters())
    assert all(p.requires_grad for n in ("upsample", "acoustic_decoder", "vocos") for p in getattr(gen, n).parameters())
    gen.train()
    assert all(not getattr(gen, n).training for n in frozen) and gen.vocos.training and codec.training
    assert gen.quantizer.frozen and not gen.quantizer.updating
    # an update through the generator is an update of the codec (shared modules)
    with torch.no_grad():
        next(gen.vocos.parameters()).add_(1.0)
    assert all(torch.equal(gen.state_dict()[k], v) for k, v in codec.state_dict().items())
    # train_post_rvq_adapter: the adapter learns too
    gen2 = Stage2Generator(_codec(), train_post_rvq_adapter=True)
    assert "post_rvq_adapter" not in gen2.frozen_modules
    assert all(p.requires_grad for p in gen2.post_rvq_adapter.parameters())
    assert set(DECODER_MODULES) - set(gen2.frozen_modules) == set(DECODER_MODULES)


def test_forward_is_the_inference_decode_of_the_codes():
    codec = _codec()
    gen = make_stage2_codec(codec).eval()
    wav = torch.from_numpy(np.load(TINY_A / "expected_short.npz")["input_wav"])[None, :32000]
    mel, mel_lengths = codec.wav_to_mel(wav, torch.tensor([32000]))
    out = gen(mel, mel_lengths)
    with torch.no_grad():
        ref = codec.detokenize(out["codes"], out["codes_lengths"])["wav"]
    assert torch.equal(out["wav"].detach(), ref)


def test_no_live_class_swaps_in_xytok():
    swaps = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Attribute) and t.attr == "__class__" for t in node.targets):
                swaps.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not swaps, f"`x.__class__ = ...` (compose instead): {swaps}"


def test_config_and_optim_modules():
    from xytok.train import config, optim, trainer

    # the trainer's old names still work and are the same objects
    for name in ("load_config", "deep_merge", "parse_overrides", "set_by_dotted_key", "TRAINER_DEFAULTS",
                 "config_changes"):
        assert getattr(trainer, name) is getattr(config, name)
    for name in ("build_optimizer", "lr_lambda_factory", "scheduler_conf_for"):
        assert getattr(trainer, name) is getattr(optim, name)
    conf = config.load_config(None, config.parse_overrides(["--optim.lr", "1e-3", "--data.max_frames=10"]))
    assert conf["optim"]["lr"] == 1e-3 and conf["data"]["max_frames"] == 10 and conf["max_steps"] == 1000
    opt = optim.build_optimizer([torch.nn.Parameter(torch.zeros(2))], conf["optim"])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.99)
