"""Discriminators and GAN losses for stage-2 (decoder) post-training."""
from xytok.gan.discriminators import DISCRIMINATOR_CLASSES, Discriminators
from xytok.gan.losses import (feature_matching_loss, get_adversarial_losses,
                              hinge_discriminator_loss, hinge_generator_loss,
                              lsgan_discriminator_loss, lsgan_generator_loss)
from xytok.gan.mpd import MultiPeriodDiscriminator
from xytok.gan.msd import MultiScaleDiscriminator
from xytok.gan.mstftd import MultiScaleSTFTDiscriminator

__all__ = ["Discriminators", "DISCRIMINATOR_CLASSES", "MultiPeriodDiscriminator",
           "MultiScaleDiscriminator", "MultiScaleSTFTDiscriminator", "feature_matching_loss",
           "get_adversarial_losses", "lsgan_discriminator_loss", "lsgan_generator_loss",
           "hinge_discriminator_loss", "hinge_generator_loss"]
