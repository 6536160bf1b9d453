"""All enabled discriminators behind one module, built from the `discriminators:` config block.

Config (every block optional; `enabled: false` switches one off; other keys go to the class):
    discriminators:
      mpd:    {enabled: true, periods: [2, 3, 5, 7, 11]}
      msd:    {enabled: true, num_scales: 3}
      mstftd: {enabled: true, n_ffts: [1024, 2048, 512], hop_lengths: [256, 512, 128],
               win_lengths: [1024, 2048, 512]}
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from xytok.gan.mpd import MultiPeriodDiscriminator
from xytok.gan.msd import MultiScaleDiscriminator
from xytok.gan.mstftd import MultiScaleSTFTDiscriminator

Tensor = torch.Tensor

DISCRIMINATOR_CLASSES = {
    "mpd": MultiPeriodDiscriminator,
    "msd": MultiScaleDiscriminator,
    "mstftd": MultiScaleSTFTDiscriminator,
}


class Discriminators(nn.Module):
    """forward(wav) -> (logits list, feature-map lists, names) over every sub-discriminator."""

    def __init__(self, config: Optional[Dict] = None):
        super().__init__()
        config = {k: {} for k in DISCRIMINATOR_CLASSES} if config is None else config
        unknown = set(config) - set(DISCRIMINATOR_CLASSES)
        if unknown:
            raise ValueError(f"unknown discriminator(s) {sorted(unknown)} in config; "
                             f"known: {sorted(DISCRIMINATOR_CLASSES)}")
        self.blocks = nn.ModuleDict()
        for name, cls in DISCRIMINATOR_CLASSES.items():
            opts = dict(config.get(name) or {}) if name in config else None
            if opts is None or not opts.pop("enabled", True):
                continue
            try:
                self.blocks[name] = cls(**opts)
            except TypeError as e:
                raise ValueError(f"discriminators.{name}: bad options {opts}: {e}") from e
        if not self.blocks:
            raise ValueError("every discriminator is disabled; enable at least one of "
                             f"{sorted(DISCRIMINATOR_CLASSES)}")

    @property
    def names(self) -> List[str]:
        return [n for block in self.blocks.values() for n in block.names]

    def forward(self, wav: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        if wav.dim() == 2:
            wav = wav.unsqueeze(1)
        logits, fmaps = [], []
        for block in self.blocks.values():
            for lg, fm in block(wav):
                logits.append(lg)
                fmaps.append(fm)
        return logits, fmaps
