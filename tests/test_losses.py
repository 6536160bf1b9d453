"""Multi-scale mel loss and feature L1: zero on identity, masking ignores padding, gradients flow."""
import torch

from xytok.losses import MultiScaleMelLoss, feature_l1


def test_mel_loss_identity_and_difference():
    torch.manual_seed(0)
    loss = MultiScaleMelLoss([[256, 64, 32], [512, 128, 64]])
    x = torch.randn(2, 8000)
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, 0.5 * x)) > 0.1
    # log-mel L1 of a 0.5x scaled signal is |log 0.5| in every unclamped bin
    assert abs(float(loss(x, 0.5 * x)) - 0.693) < 0.05


def test_mel_loss_ignores_padding_and_has_gradient():
    torch.manual_seed(0)
    loss = MultiScaleMelLoss([[256, 64, 32]])
    target = torch.randn(2, 6400)
    target[1, 3200:] = 0
    pred = target.clone()
    pred[1, 3200 + 512:] = torch.randn(6400 - 3200 - 512)  # garbage well inside the padding
    lengths = torch.tensor([6400, 3200])
    assert float(loss(pred, target, lengths)) < 1e-6
    assert float(loss(pred, target)) > 0.01
    p = torch.randn(1, 4000, requires_grad=True)
    loss(p, torch.randn(1, 4000)).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_feature_l1_masks_frames():
    a = torch.zeros(2, 80, 10)
    b = torch.zeros(2, 80, 10)
    b[1, :, 6:] = 5.0
    assert float(feature_l1(a, b, torch.tensor([10, 6]))) == 0.0
    assert float(feature_l1(a, b, None)) > 0
