"""GAN objectives over lists of sub-discriminator outputs.

Every function takes the flat lists produced by `Discriminators.forward`: one `logits` tensor per
sub-discriminator (and one list of feature maps per sub-discriminator for feature matching). Losses
are averaged over sub-discriminators so their scale does not depend on how many are switched on.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _mean(terms: List[Tensor]) -> Tensor:
    if not terms:
        raise ValueError("GAN loss got no discriminator outputs (are all discriminators disabled?)")
    return torch.stack(terms).mean()


def lsgan_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """Least-squares GAN (Mao et al.): real -> 1, fake -> 0."""
    return _mean([torch.mean((1 - r.float()) ** 2) + torch.mean(f.float() ** 2)
                  for r, f in zip(real_logits, fake_logits)])


def lsgan_generator_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    return _mean([torch.mean((1 - f.float()) ** 2) for f in fake_logits])


def hinge_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """Hinge loss: zero once real > 1 and fake < -1 (margin reached)."""
    return _mean([torch.mean(F.relu(1 - r.float())) + torch.mean(F.relu(1 + f.float()))
                  for r, f in zip(real_logits, fake_logits)])


def hinge_generator_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    return _mean([-torch.mean(f.float()) for f in fake_logits])


def feature_matching_loss(real_fmaps: Sequence[Sequence[Tensor]],
                          fake_fmaps: Sequence[Sequence[Tensor]], eps: float = 1e-8) -> Tensor:
    """L1 between discriminator feature maps, each layer normalised by the mean |real feature|
    (as in EnCodec) so that deep layers with large activations do not dominate. Real features are
    targets (detached): this loss trains only the generator."""
    terms = []
    for real_layers, fake_layers in zip(real_fmaps, fake_fmaps):
        if len(real_layers) != len(fake_layers):
            raise ValueError(f"feature matching: {len(real_layers)} real vs {len(fake_layers)} "
                             "fake feature maps from one sub-discriminator")
        layer_terms = []
        for r, f in zip(real_layers, fake_layers):
            r = r.detach().float()
            layer_terms.append(F.l1_loss(f.float(), r) / (r.abs().mean() + eps))
        terms.append(torch.stack(layer_terms).mean())
    return _mean(terms)


ADVERSARIAL_LOSSES = {
    "lsgan": (lsgan_discriminator_loss, lsgan_generator_loss),
    "hinge": (hinge_discriminator_loss, hinge_generator_loss),
}


def get_adversarial_losses(kind: str):
    """-> (discriminator_loss_fn, generator_loss_fn) for 'lsgan' or 'hinge'."""
    if kind not in ADVERSARIAL_LOSSES:
        raise ValueError(f"unknown adversarial loss {kind!r}; choose one of {sorted(ADVERSARIAL_LOSSES)}")
    return ADVERSARIAL_LOSSES[kind]
