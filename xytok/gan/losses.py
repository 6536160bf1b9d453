"""GAN objectives over lists of sub-discriminator outputs.

Every function takes the flat lists produced by `Discriminators.forward`: one `logits` tensor per
sub-discriminator (and one list of feature maps per sub-discriminator for feature matching), and a
`reduction` over sub-discriminators (config `loss.gan_reduction`):

* ``"sum"`` (default; HiFi-GAN, DAC): terms are added over the K sub-discriminators (and, for
  feature matching, over each one's layers), so the loss weights mean what they mean in those
  recipes (DAC: mel 15, adv 1, fm 2) and the adversarial signal grows with K;
* ``"mean"``: terms are averaged over sub-discriminators (and layers), so the scale does not
  depend on how many are switched on -- K times weaker than ``"sum"`` for the adversarial and
  discriminator losses (this was the only behaviour before `gan_reduction` existed).

With x_k the logits of sub-discriminator k (each `mean` over batch and positions):

    LSGAN  D: sum_k mean((1 - x_k_real)^2) + mean(x_k_fake^2)    G: sum_k mean((1 - x_k_fake)^2)
    hinge  D: sum_k mean(relu(1 - x_k_real)) + mean(relu(1 + x_k_fake))    G: sum_k -mean(x_k_fake)
    FM       sum_k sum_l mean|f_kl - r_kl| / (mean|r_kl| + eps)

where r_kl / f_kl are layer l's feature maps of sub-discriminator k on real / generated audio (every
map the discriminator returns, the last one being the logit map, as HiFi-GAN). With ``"mean"`` every
`sum` above becomes a mean (FM: mean over layers, then over sub-discriminators). The FM per-layer
normalisation by mean|r_kl| is EnCodec's (DAC and HiFi-GAN use the bare mean|f_kl - r_kl|): it
keeps deep layers with large activations from dominating, in both reductions.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

REDUCTIONS = ("sum", "mean")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown GAN loss reduction {reduction!r} (loss.gan_reduction); "
                         f"choose one of {list(REDUCTIONS)}")
    return reduction


def _reduce(terms: List[Tensor], reduction: str) -> Tensor:
    check_reduction(reduction)
    if not terms:
        raise ValueError("GAN loss got no discriminator outputs (are all discriminators disabled?)")
    stacked = torch.stack(terms)
    return stacked.sum() if reduction == "sum" else stacked.mean()


def lsgan_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor],
                             reduction: str = "sum") -> Tensor:
    """Least-squares GAN (Mao et al.): real -> 1, fake -> 0."""
    return _reduce([torch.mean((1 - r.float()) ** 2) + torch.mean(f.float() ** 2)
                    for r, f in zip(real_logits, fake_logits)], reduction)


def lsgan_generator_loss(fake_logits: Sequence[Tensor], reduction: str = "sum") -> Tensor:
    return _reduce([torch.mean((1 - f.float()) ** 2) for f in fake_logits], reduction)


def hinge_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor],
                             reduction: str = "sum") -> Tensor:
    """Hinge loss: zero once real > 1 and fake < -1 (margin reached)."""
    return _reduce([torch.mean(F.relu(1 - r.float())) + torch.mean(F.relu(1 + f.float()))
                    for r, f in zip(real_logits, fake_logits)], reduction)


def hinge_generator_loss(fake_logits: Sequence[Tensor], reduction: str = "sum") -> Tensor:
    return _reduce([-torch.mean(f.float()) for f in fake_logits], reduction)


def feature_matching_loss(real_fmaps: Sequence[Sequence[Tensor]],
                          fake_fmaps: Sequence[Sequence[Tensor]], eps: float = 1e-8,
                          reduction: str = "sum") -> Tensor:
    """L1 between discriminator feature maps, each layer normalised by the mean |real feature|
    (as in EnCodec); `reduction` over layers and sub-discriminators (module docstring). Real
    features are targets (detached): this loss trains only the generator."""
    terms = []
    for real_layers, fake_layers in zip(real_fmaps, fake_fmaps):
        if len(real_layers) != len(fake_layers):
            raise ValueError(f"feature matching: {len(real_layers)} real vs {len(fake_layers)} "
                             "fake feature maps from one sub-discriminator")
        layer_terms = []
        for r, f in zip(real_layers, fake_layers):
            r = r.detach().float()
            layer_terms.append(F.l1_loss(f.float(), r) / (r.abs().mean() + eps))
        terms.append(_reduce(layer_terms, reduction))
    return _reduce(terms, reduction)


ADVERSARIAL_LOSSES = {
    "lsgan": (lsgan_discriminator_loss, lsgan_generator_loss),
    "hinge": (hinge_discriminator_loss, hinge_generator_loss),
}


def get_adversarial_losses(kind: str):
    """-> (discriminator_loss_fn, generator_loss_fn) for 'lsgan' or 'hinge'; both take
    `reduction=` ('sum' | 'mean')."""
    if kind not in ADVERSARIAL_LOSSES:
        raise ValueError(f"unknown adversarial loss {kind!r}; choose one of {sorted(ADVERSARIAL_LOSSES)}")
    return ADVERSARIAL_LOSSES[kind]
