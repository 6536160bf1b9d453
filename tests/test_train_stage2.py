"""Stage-2 GAN post-training (xytok/train/stage2.py) on a tiny codec, through the real trainer.

Covers: frozen token side (codes and frozen weights bit-identical after training while the decoder
changes), discriminator start step, SIGKILL + resume giving identical logged losses, and the export
loading with load_codec.
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from recipe_helpers import sigkill_when_exists
from xytok.codec import load_codec
from xytok.train.distributed import DistInfo
from xytok.train.stage2 import TOKENIZER_MODULES, Stage2Task
from xytok.train.trainer import Trainer, load_config

REPO = Path(__file__).resolve().parents[1]


def _encoder(d):
    return {"num_mel_bins": 80, "sampling_rate": 16000, "hop_length": 160, "stride_size": 2,
            "kernel_size": 3, "d_model": d, "scale_embedding": False, "max_audio_seconds": 30,
            "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 2 * d,
            "activation_function": "gelu"}


def _adapter(i, o, d, pos):
    return {"input_dim": i, "output_dim": o, "d_model": d, "max_source_positions": pos,
            "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 2 * d}


D = 16
GENERATOR_PARAMS = {
    "sample_rate": 16000,
    "semantic_encoder_kwargs": _encoder(D),
    "semantic_encoder_adapter_kwargs": _adapter(D, D, D, 1500),
    "acoustic_encoder_kwargs": _encoder(D),
    "pre_rvq_adapter_kwargs": _adapter(2 * D, D, D, 1500),
    "downsample_kwargs": {"d_model": D, "avg_pooler": 4},
    "quantizer_kwargs": {"input_dim": 4 * D, "rvq_dim": 8, "output_dim": 4 * D, "num_quantizers": 2,
                         "codebook_size": 16, "codebook_dim": 8, "quantizer_dropout": 0.0,
                         "commitment": 1},
    "post_rvq_adapter_kwargs": _adapter(4 * D, 4 * D, D, 375),
    "upsample_kwargs": {"d_model": D, "stride": 4},
    "acoustic_decoder_kwargs": {"num_mel_bins": 80, "sampling_rate": 16000, "hop_length": 160,
                                "stride_size": 2, "kernel_size": 3, "d_model": D,
                                "scale_embedding": False, "max_audio_seconds": 30,
                                "decoder_layers": 1, "decoder_attention_heads": 2,
                                "decoder_ffn_dim": 2 * D, "activation_function": "gelu"},
    "vocos_kwargs": {"input_channels": 80, "dim": 16, "intermediate_dim": 32, "num_layers": 1,
                     "n_fft": 640, "hop_size": 160, "padding": "same"},
}

TINY_DISCS = {
    "mpd": {"periods": [2, 3], "channels": [4, 8]},
    "msd": {"num_scales": 2, "width": 0.0625},
    "mstftd": {"n_ffts": [256], "hop_lengths": [64], "win_lengths": [256], "filters": 4},
}


def _config(tmp: Path, **extra):
    conf = {
        "task": "stage2", "seed": 3, "max_steps": 4, "log_interval": 1, "valid_interval": 1000,
        "save_interval": 2, "num_workers": 0, "tensorboard": False, "grad_clip": 10.0,
        "generator_params": GENERATOR_PARAMS, "discriminators": TINY_DISCS,
        "optim": {"generator": {"lr": 1e-3}, "discriminator": {"lr": 1e-3}},
        "data": {"train": str(tmp / "data"), "valid": None, "crop_seconds": 0.64, "max_frames": 400,
                 "max_batch_size": 2, "min_seconds": 0.08},
        "log_examples": 1,
    }
    conf.update(extra)
    path = tmp / f"conf_{len(list(tmp.glob('conf_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    """A tiny 'stage-1' codec with initialised codebooks (released format) and a 4-utt data dir."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("stage2")
    codec = load_codec({"generator_params": GENERATOR_PARAMS})
    for q in codec.quantizer.quantizers:  # a trained-looking codebook: distinct codes per frame
        q.codebook.copy_(torch.randn_like(q.codebook))
        q.embed_avg.copy_(q.codebook)
        q.cluster_size.fill_(1.0)
        q.inited.fill_(True)
    init = tmp / "stage1_export"
    init.mkdir()
    torch.save({"generator": codec.state_dict()}, init / "model.ckpt")
    (init / "config.yaml").write_text(yaml.safe_dump({"generator_params": GENERATOR_PARAMS}))
    data = tmp / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    scp, lens = [], []
    for i in range(4):
        n = 12800 + 1280 * i
        wav = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t[:n]) + 0.02 * rng.standard_normal(n)
        path = data / f"utt{i}.wav"
        sf.write(path, wav.astype(np.float32), 16000)
        scp.append(f"utt{i} {path}\n")
        lens.append(f"utt{i} {n}\n")
    (data / "wav.scp").write_text("".join(scp))
    (data / "utt2num_samples").write_text("".join(lens))
    return tmp


def _probe_wavs():
    torch.manual_seed(123)
    return [0.1 * torch.randn(12800), 0.1 * torch.randn(8960)]


def _run_in_process(conf_path, out_dir, init_param):
    torch.set_num_threads(1)
    config = load_config(str(conf_path), {}, task_defaults=Stage2Task.default_config)
    task = Stage2Task(config, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, out_dir, task, DistInfo(), init_param=str(init_param))
    trainer.run()
    return trainer


def _train_metrics(exp: Path):
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == "train"]


def test_codes_frozen_decoder_trains_and_export_loads(setup_dir):
    init = setup_dir / "stage1_export"
    before = load_codec(str(init / "config.yaml"), str(init / "model.ckpt"))
    wavs = _probe_wavs()
    codes_before = before.encode(wavs)

    exp = setup_dir / "exp_frozen"
    conf = _config(setup_dir, valid_interval=4)
    conf_dict = yaml.safe_load(conf.read_text())
    conf_dict["data"]["valid"] = str(setup_dir / "data")
    conf.write_text(yaml.safe_dump(conf_dict))
    trainer = _run_in_process(conf, exp, init / "model.ckpt")
    gen = trainer.ctx.raw_models["generator"]
    # the trainer's .train() calls never switched the frozen side out of eval mode
    assert all(not getattr(gen, n).training for n in TOKENIZER_MODULES + ("post_rvq_adapter",))
    assert gen.acoustic_decoder.training and gen.vocos.training

    # released-format export, loadable with load_codec, with exactly the codec keys
    ckpt = torch.load(exp / "export" / "model.ckpt", map_location="cpu")
    assert set(ckpt) == {"generator"}
    assert set(ckpt["generator"]) == set(before.state_dict())
    after = load_codec(str(exp / "export" / "config.yaml"), str(exp / "export" / "model.ckpt"))

    sd0, sd1 = before.state_dict(), after.state_dict()
    frozen = [k for k in sd0 if k.split(".")[0] in TOKENIZER_MODULES + ("post_rvq_adapter",)]
    assert frozen and all(torch.equal(sd0[k], sd1[k]) for k in frozen), "a frozen tensor changed"
    changed = [k for k in sd0 if k.split(".")[0] in ("upsample", "acoustic_decoder", "vocos")
               and not torch.equal(sd0[k], sd1[k])]
    assert changed, "stage 2 did not update the decoder"

    codes_after = after.encode(wavs)
    for a, b in zip(codes_before, codes_after):
        assert torch.equal(a, b)
    # and the decoder output did change
    assert not torch.equal(before.decode(codes_before)[0], after.decode(codes_after)[0])

    metrics = _train_metrics(exp)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all({"loss_d", "loss_adv", "loss_fm", "loss_mel", "loss_g"} <= set(m) for m in metrics)
    valid = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()
             if '"valid"' in line]
    assert len(valid) == 1 and valid[0]["step"] == 4 and valid[0]["mel_distance"] > 0
    assert len(list((exp / "images").glob("step4_*.png"))) == 1  # log_examples: 1 utterance
    assert len(list((exp / "samples" / "step4").glob("*.wav"))) == 2  # reference + generated


def test_disc_start_step_and_hinge(setup_dir):
    exp = setup_dir / "exp_start"
    conf = _config(setup_dir, disc_start_step=2, max_steps=3, save_interval=100,
                   loss={"adversarial": "hinge"})
    trainer = _run_in_process(conf, exp, setup_dir / "stage1_export" / "model.ckpt")
    metrics = _train_metrics(exp)
    assert "loss_d" not in metrics[0] and "loss_d" not in metrics[1]
    assert "loss_d" in metrics[2] and "loss_adv" in metrics[2]
    # the discriminator optimizer only stepped once the discriminators joined
    opt_state = trainer.ctx.optimizers["discriminator"].state_dict()["state"]
    assert all(int(s["step"]) == 1 for s in opt_state.values())


def test_init_param_sources_and_errors(setup_dir):
    config = load_config(str(_config(setup_dir)), {}, task_defaults=Stage2Task.default_config)
    task = Stage2Task(config, setup_dir / "unused")
    models = task.build_models()
    released = torch.load(setup_dir / "stage1_export" / "model.ckpt")["generator"]
    # a stage-1 training checkpoint: codec under `codec.` next to the ASR branch (dropped)
    stage1 = {"models": {"stage1": {**{"codec." + k: v for k, v in released.items()},
                                    "asr.proj.weight": torch.zeros(3)}}}
    task.init_from(models, stage1)
    assert all(torch.equal(models["generator"].state_dict()[k], v) for k, v in released.items())
    with pytest.raises(ValueError, match="no codec weights"):
        task.init_from(models, {"models": {"asr": {"proj.weight": torch.zeros(3)}}})
    fresh = load_codec({"generator_params": GENERATOR_PARAMS}).state_dict()  # inited=False
    with pytest.raises(ValueError, match="never initialised"):
        task.init_from(models, {"generator": fresh})
    partial = {k: v for k, v in fresh.items() if not k.startswith("vocos.")}
    with pytest.raises(ValueError, match="lacks .* codec weights"):
        task.init_from(models, {"generator": partial})


def test_disc_windows_aligned_inside_lengths_and_seeded(tmp_path):
    """The discriminator window is cut at the same place from reference and generated audio,
    lies inside each item's valid samples when it fits, and depends only on (seed, step)."""
    task = Stage2Task(load_config(str(_config(tmp_path, disc_segment_seconds=0.08)), {},
                                  task_defaults=Stage2Task.default_config), tmp_path)
    n, seg = 6400, 1280
    wav = torch.arange(3 * n, dtype=torch.float32).reshape(3, n)
    lengths = torch.tensor([n, 3000, 1000])  # the last item is shorter than the window
    a_real, a_fake = task._disc_windows(wav, -wav, lengths, step=5)
    assert a_real.shape == (3, seg) and torch.equal(a_fake, -a_real)
    starts = a_real[:, 0] - torch.arange(3) * n
    assert torch.equal(a_real - a_real[:, :1], torch.arange(seg, dtype=torch.float32).expand(3, seg))
    assert int(starts[1]) + seg <= 3000 and int(starts[2]) == 0
    assert torch.equal(task._disc_windows(wav, -wav, lengths, step=5)[0], a_real)
    others = [task._disc_windows(wav, -wav, lengths, step=s)[0][0, 0] for s in range(6, 12)]
    assert any(o != a_real[0, 0] for o in others)
    task.disc_segment = None  # off: the whole crop
    assert task._disc_windows(wav, -wav, lengths, step=5)[0] is wav


def test_generator_config_overrides_inline_params(setup_dir, tmp_path):
    """--generator_config (recipe stage 6: the stage-1 export's config.yaml) decides the
    architecture, even over wrong inline generator_params; without either, a clear error."""
    init_conf = setup_dir / "stage1_export" / "config.yaml"
    wrong = copy.deepcopy(GENERATOR_PARAMS)
    wrong["vocos_kwargs"]["dim"] = 48
    for params in (wrong, None):
        config = load_config(str(_config(tmp_path, generator_params=params)),
                             {"generator_config": str(init_conf)}, task_defaults=Stage2Task.default_config)
        task = Stage2Task(config, tmp_path)
        assert task.generator_params == GENERATOR_PARAMS
        models = task.build_models()
        task.init_from(models, torch.load(setup_dir / "stage1_export" / "model.ckpt"))
    config = load_config(str(_config(tmp_path, generator_params=None)), {},
                         task_defaults=Stage2Task.default_config)
    with pytest.raises(ValueError, match="generator_config"):
        Stage2Task(config, tmp_path)


def _cmd(conf, exp, init):
    return [sys.executable, "-m", "xytok.bin.train", "--config", str(conf), "--output_dir", str(exp),
            "--init_param", str(init)]


def test_sigkill_resume_identical_losses(setup_dir):
    """Kill -9 after the step-2 checkpoint; re-running resumes and logs the same losses as an
    uninterrupted run (discriminators, both optimizers/schedulers and RNG restored)."""
    init = setup_dir / "stage1_export" / "model.ckpt"
    conf = _config(setup_dir, max_steps=4, save_interval=2, disc_segment_seconds=0.32)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    full, killed = setup_dir / "exp_full", setup_dir / "exp_killed"
    subprocess.run(_cmd(conf, full, init), check=True, env=env, cwd=REPO, capture_output=True)

    sigkill_when_exists(_cmd(conf, killed, init), killed / "checkpoints" / "step2.pth", 120, env=env, cwd=REPO)
    assert not (killed / "export" / "model.ckpt").exists(), "killed too late: the run had finished"
    subprocess.run(_cmd(conf, killed, init), check=True, env=env, cwd=REPO, capture_output=True)

    a, b = _train_metrics(full), _train_metrics(killed)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    keys = ("loss_d", "loss_adv", "loss_fm", "loss_mel", "loss_g", "d_real", "d_fake")
    for ma, mb in zip(a, b):
        for k in keys:
            assert ma[k] == mb[k], (ma["step"], k, ma[k], mb[k])
    s1 = torch.load(full / "export" / "model.ckpt")["generator"]
    s2 = torch.load(killed / "export" / "model.ckpt")["generator"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_generator_overrides_decoder_only(setup_dir, tmp_path):
    """generator_overrides changes the decoder side (a wider Vocos here): the tokenizer loads from
    the stage-1 export bit for bit, the changed decoder weights start fresh, and an override of a
    tokenizer section is refused (it would change the codes)."""
    init_conf = setup_dir / "stage1_export" / "config.yaml"
    released = torch.load(setup_dir / "stage1_export" / "model.ckpt")["generator"]
    config = load_config(str(_config(tmp_path, generator_params=None,
                                     generator_overrides={"vocos_kwargs": {"dim": 24}})),
                         {"generator_config": str(init_conf)}, task_defaults=Stage2Task.default_config)
    task = Stage2Task(config, tmp_path)
    assert task.generator_params["vocos_kwargs"]["dim"] == 24
    assert task.generator_params["acoustic_decoder_kwargs"] == GENERATOR_PARAMS["acoustic_decoder_kwargs"]
    models = task.build_models()
    task.init_from(models, torch.load(setup_dir / "stage1_export" / "model.ckpt"))
    sd = models["generator"].state_dict()
    for k, v in released.items():
        if k.split(".")[0] in TOKENIZER_MODULES or k.startswith("acoustic_decoder."):
            assert torch.equal(sd[k], v), k
    assert sd["vocos.head.out.weight"].shape[1] == 24
    # without overrides, a reshaped decoder weight is an error, not a silent re-init
    plain = load_config(str(_config(tmp_path, generator_params=None)), {"generator_config": str(init_conf)},
                        task_defaults=Stage2Task.default_config)
    ptask = Stage2Task(plain, tmp_path)
    bad = dict(released)
    bad["vocos.head.out.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="do not fit"):
        ptask.init_from(ptask.build_models(), {"generator": bad})
    config = load_config(str(_config(tmp_path, generator_params=None,
                                     generator_overrides={"quantizer_kwargs": {"codebook_size": 32}})),
                         {"generator_config": str(init_conf)}, task_defaults=Stage2Task.default_config)
    with pytest.raises(ValueError, match="tokenizer side"):
        Stage2Task(config, tmp_path)
