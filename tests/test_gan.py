"""Discriminator shapes and GAN loss values/signs (xytok.gan)."""
import math

import pytest
import torch

from xytok.gan import (Discriminators, feature_matching_loss, get_adversarial_losses,
                       hinge_discriminator_loss, hinge_generator_loss, lsgan_discriminator_loss,
                       lsgan_generator_loss)

TINY = {
    "mpd": {"periods": [2, 3, 5], "channels": [4, 8, 8]},
    "msd": {"num_scales": 3, "width": 0.0625},
    "mstftd": {"n_ffts": [256, 128], "hop_lengths": [64, 32], "win_lengths": [256, 128],
               "filters": 4},
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_shapes_and_names():
    d = Discriminators(TINY)
    assert d.names == ["mpd_p2", "mpd_p3", "mpd_p5", "msd_s0", "msd_s1", "msd_s2",
                       "mstftd_256", "mstftd_128"]
    n = 3201  # odd length: exercises MPD padding
    logits, fmaps = d(torch.randn(2, n))
    assert len(logits) == len(fmaps) == 8
    for lg, fm in zip(logits, fmaps):
        assert lg.dim() == 2 and lg.shape[0] == 2 and lg.shape[1] > 0
        assert all(f.shape[0] == 2 for f in fm)
        assert torch.equal(fm[-1].flatten(1), lg)  # last feature map is the logit map
    # MPD: grid of (ceil(n/p), p) shrinks by stride 3 along time for len(channels)-1 convs
    for lg, p in zip(logits[:3], (2, 3, 5)):
        rows = math.ceil(n / p)
        for _ in range(2):
            rows = (rows + 2 * 2 - 5) // 3 + 1
        assert lg.shape[1] == rows * p
    # MSD: each scale sees the input average-pooled by 2 once more
    assert logits[3].shape[1] > logits[4].shape[1] > logits[5].shape[1]
    # MS-STFTD: (frames, freq bins / 2**3) maps
    frames = n // 64 + 1
    assert fmaps[6][0].shape[1:] == (4, frames, 129)
    assert logits[6].shape[1] == frames * math.ceil(129 / 8)
    # (B, 1, N) input is accepted too
    logits3, _ = d(torch.randn(2, 1, n))
    assert [l.shape for l in logits3] == [l.shape for l in logits]


def test_switching_and_config_errors():
    d = Discriminators({"mpd": {"enabled": False, "periods": [2]}, "msd": TINY["msd"]})
    assert d.names == ["msd_s0", "msd_s1", "msd_s2"]
    with pytest.raises(ValueError, match="unknown discriminator"):
        Discriminators({"mbd": {}})
    with pytest.raises(ValueError, match="every discriminator is disabled"):
        Discriminators({"mpd": {"enabled": False}})
    with pytest.raises(ValueError, match="discriminators.msd: bad options"):
        Discriminators({"msd": {"scales": 3}})


def test_lsgan_signs():
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    separated = lsgan_discriminator_loss(ones, zeros)  # real->1, fake->0: perfect
    confused = lsgan_discriminator_loss(zeros, ones)
    assert separated.item() == 0.0 and confused.item() == pytest.approx(2.0)
    assert lsgan_generator_loss(ones).item() == 0.0  # fooled discriminator
    assert lsgan_generator_loss(zeros).item() == pytest.approx(1.0)
    assert lsgan_discriminator_loss([torch.full((1, 3), 0.5)], [torch.full((1, 3), 0.5)]).item() \
        == pytest.approx(0.5)


def test_hinge_values():
    real, fake = [torch.full((2, 4), 2.0)], [torch.full((2, 4), -2.0)]
    assert hinge_discriminator_loss(real, fake).item() == 0.0  # beyond margin
    assert hinge_discriminator_loss([torch.zeros(2, 4)], [torch.zeros(2, 4)]).item() \
        == pytest.approx(2.0)
    assert hinge_discriminator_loss([torch.full((1, 2), 0.5)], [torch.full((1, 2), 0.25)]).item() \
        == pytest.approx(0.5 + 1.25)
    assert hinge_generator_loss([torch.tensor([[1.0, 3.0]])]).item() == pytest.approx(-2.0)
    d_fn, g_fn = get_adversarial_losses("hinge")
    assert d_fn is hinge_discriminator_loss and g_fn is hinge_generator_loss
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        get_adversarial_losses("wgan")


def test_feature_matching():
    d = Discriminators(TINY).eval()  # eval: spectral norm's power iteration must not step
    x = torch.randn(1, 2000)
    _, fm_real = d(x)
    _, fm_same = d(x.clone())
    assert feature_matching_loss(fm_real, fm_same).item() == 0.0
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    _, fm_fake = d(y)
    loss = feature_matching_loss(fm_real, fm_fake)
    assert loss.item() > 0
    loss.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    # scale invariance from the normalisation: scaling both sides by 10 keeps the loss
    a = [[torch.ones(1, 3)]]
    b = [[torch.full((1, 3), 2.0)]]
    assert feature_matching_loss(a, b).item() == pytest.approx(
        feature_matching_loss([[10 * a[0][0]]], [[10 * b[0][0]]]).item())


def test_discriminator_learns_to_separate():
    """A few LSGAN steps on real=tones vs fake=noise must lower the D loss (loss has the right sign)."""
    d = Discriminators({"msd": {"num_scales": 2, "width": 0.0625},
                        "mpd": {"periods": [2, 3], "channels": [4, 8]}})
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    t = torch.arange(1600) / 16000
    real = torch.stack([torch.sin(2 * math.pi * f * t) for f in (200.0, 330.0)]) * 0.5
    fake = 0.5 * torch.randn(2, 1600)
    losses = []
    for _ in range(30):
        lr_, _ = d(real)
        lf, _ = d(fake)
        loss = lsgan_discriminator_loss(lr_, lf)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


# -- loss.gan_reduction: sum (HiFi-GAN / DAC) vs mean over sub-discriminators ---------------------
def _old_mean_losses(real_logits, fake_logits, real_fmaps, fake_fmaps):
    """The losses as computed before `reduction` existed (mean over sub-discriminators, FM mean
    over layers then sub-discriminators), written out independently."""
    d = torch.stack([torch.mean((1 - r) ** 2) + torch.mean(f ** 2)
                     for r, f in zip(real_logits, fake_logits)]).mean()
    g = torch.stack([torch.mean((1 - f) ** 2) for f in fake_logits]).mean()
    hd = torch.stack([torch.mean(torch.relu(1 - r)) + torch.mean(torch.relu(1 + f))
                      for r, f in zip(real_logits, fake_logits)]).mean()
    hg = torch.stack([-torch.mean(f) for f in fake_logits]).mean()
    fm = torch.stack([torch.stack([torch.nn.functional.l1_loss(f, r) / (r.abs().mean() + 1e-8)
                                   for r, f in zip(rl, fl)]).mean()
                      for rl, fl in zip(real_fmaps, fake_fmaps)]).mean()
    return d, g, hd, hg, fm


def _tiny_outputs():
    d = Discriminators(TINY).eval()
    x = torch.randn(2, 2400)
    with torch.no_grad():
        real_logits, real_fmaps = d(x)
        fake_logits, fake_fmaps = d(x + 0.2 * torch.randn_like(x))
    return real_logits, fake_logits, real_fmaps, fake_fmaps


def test_reduction_sum_is_k_times_mean_and_mean_is_the_old_computation():
    real_logits, fake_logits, real_fmaps, fake_fmaps = _tiny_outputs()
    k = len(real_logits)
    assert k == 8
    pairs = [(lsgan_discriminator_loss, (real_logits, fake_logits)),
             (lsgan_generator_loss, (fake_logits,)),
             (hinge_discriminator_loss, (real_logits, fake_logits)),
             (hinge_generator_loss, (fake_logits,))]
    old = _old_mean_losses(real_logits, fake_logits, real_fmaps, fake_fmaps)
    for (fn, args), old_value in zip(pairs, old):
        mean = fn(*args, reduction="mean")
        assert torch.equal(mean, old_value), fn.__name__  # bit-identical to the old numbers
        assert fn(*args, reduction="sum").item() == pytest.approx(k * mean.item(), rel=1e-6)
        assert torch.equal(fn(*args), fn(*args, reduction="sum"))  # sum is the default
    fm_mean = feature_matching_loss(real_fmaps, fake_fmaps, reduction="mean")
    assert torch.equal(fm_mean, old[4])
    # sum: every (sub-discriminator, layer) term added; here layers per sub-discriminator differ
    # (MPD 4, MSD 8, MS-STFTD 6 maps), so sum != k * mean and != total layers * mean
    per_layer = [[(torch.mean(torch.abs(f - r)) / (torch.mean(torch.abs(r)) + 1e-8)).item()
                  for r, f in zip(rl, fl)] for rl, fl in zip(real_fmaps, fake_fmaps)]
    assert sorted({len(p) for p in per_layer}) == [4, 6, 8]
    assert feature_matching_loss(real_fmaps, fake_fmaps).item() == pytest.approx(
        sum(map(sum, per_layer)), rel=1e-6)
    with pytest.raises(ValueError, match="gan_reduction"):
        lsgan_generator_loss(fake_logits, reduction="avg")


def test_feature_matching_sum_by_hand():
    # one sub-discriminator with 2 layers, one with 1:
    #   |2-1|/1 = 1, mean(|[0,3]-[1,1]|)/1 = (1+2)/2 = 1.5, |-1-(-2)|/2 = 0.5
    real = [[torch.tensor([[1.0]]), torch.tensor([[1.0, 1.0]])], [torch.tensor([[-2.0]])]]
    fake = [[torch.tensor([[2.0]]), torch.tensor([[0.0, 3.0]])], [torch.tensor([[-1.0]])]]
    assert feature_matching_loss(real, fake, reduction="sum").item() == pytest.approx(1 + 1.5 + 0.5)
    assert feature_matching_loss(real, fake, reduction="mean").item() == pytest.approx(
        ((1 + 1.5) / 2 + 0.5) / 2)
    assert lsgan_generator_loss([torch.zeros(1, 2), torch.full((1, 2), 0.5)]).item() \
        == pytest.approx(1 + 0.25)


def test_gan_reduction_flows_through_stage2_task(tmp_path, caplog):
    """Stage2Task reads loss.gan_reduction (default sum) and uses it in train_step / valid_step."""
    import contextlib
    import logging
    from types import SimpleNamespace

    from test_train_stage2 import GENERATOR_PARAMS
    from xytok.codec import load_codec
    from xytok.train.stage2 import Stage2Task, make_stage2_codec
    from xytok.train.trainer import load_config

    def task_with(loss):
        config = load_config(None, {}, task_defaults=Stage2Task.default_config)
        config["generator_params"] = GENERATOR_PARAMS
        config["loss"].update(loss)
        config["discriminators"] = TINY
        task = Stage2Task(config, tmp_path)
        task._checked_init = True  # a fresh codec: its never-initialised RVQ is irrelevant here
        return task

    assert Stage2Task.default_config["loss"]["gan_reduction"] == "sum"
    with caplog.at_level(logging.INFO, logger="xytok.train"):
        tasks = {r: task_with({"gan_reduction": r}) for r in ("sum", "mean")}
    assert "mean over sub-discriminators" in caplog.text and "sum over sub-discriminators" in caplog.text
    assert task_with({}).gan_reduction == "sum"
    with pytest.raises(ValueError, match="gan_reduction"):
        task_with({"gan_reduction": "max"})

    models = tasks["sum"].build_models()
    codec = make_stage2_codec(load_codec({"generator_params": GENERATOR_PARAMS}))
    codec.load_state_dict(models["generator"].state_dict())
    models["generator"] = codec
    k = len(models["discriminator"].names)
    t = torch.arange(2 * 5120) / 16000
    batch = {"utt_ids": ["a", "b"], "wav": 0.3 * torch.sin(2 * math.pi * 220 * t).repeat(2, 1),
             "wav_lengths": torch.tensor([10240, 7680])}
    ctx = SimpleNamespace(models=models, raw_models=models, step=0, autocast=contextlib.nullcontext,
                          backward=lambda loss, names: None, optimizer_step=lambda name: None)
    values = {r: task.train_step(batch, 0, ctx) for r, task in tasks.items()}
    for key in ("loss_d", "loss_adv"):
        assert values["sum"][key] == pytest.approx(k * values["mean"][key], rel=1e-5), key
    assert values["sum"]["loss_fm"] > k * values["mean"]["loss_fm"]  # > 1 layer per sub-disc
    assert values["sum"]["loss_mel"] == pytest.approx(values["mean"]["loss_mel"], rel=1e-6)
    models["generator"].eval()
    models["discriminator"].eval()
    valid = {r: task.valid_step(batch, ctx) for r, task in tasks.items()}
    assert valid["sum"]["loss_adv"] == pytest.approx(k * valid["mean"]["loss_adv"], rel=1e-5)
