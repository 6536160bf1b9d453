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
