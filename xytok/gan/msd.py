"""Multi-scale discriminator (MelGAN / HiFi-GAN).

Identical 1-D conv stacks judge the waveform at 1x, 2x and 4x average-pooled resolution, so the
coarse scales focus on longer-range structure. The first (raw-rate) scale uses spectral norm as in
HiFi-GAN, the others weight norm.
"""
from typing import List

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from xytok.gan.mpd import DiscOutput, conv_stack

Tensor = torch.Tensor


class ScaleDiscriminator(nn.Module):
    # (out_channels, kernel, stride, groups) of the HiFi-GAN scale discriminator at width 1.0
    LAYOUT = ((128, 15, 1, 1), (128, 41, 2, 4), (256, 41, 2, 16), (512, 41, 4, 16),
              (1024, 41, 4, 16), (1024, 41, 1, 16), (1024, 5, 1, 1))

    def __init__(self, width: float = 1.0, use_spectral_norm: bool = False,
                 negative_slope: float = 0.1):
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        self.negative_slope = negative_slope
        layers = []
        in_ch = 1
        for out_ch, k, s, g in self.LAYOUT:
            out_ch = max(int(out_ch * width), g)
            out_ch -= out_ch % g  # grouped convs need channel counts divisible by groups
            g = g if in_ch % g == 0 else 1
            layers.append(norm(nn.Conv1d(in_ch, out_ch, k, s, padding=(k - 1) // 2, groups=g)))
            in_ch = out_ch
        self.convs = nn.ModuleList(layers)
        self.conv_post = norm(nn.Conv1d(in_ch, 1, 3, 1, padding=1))

    def forward(self, wav: Tensor) -> DiscOutput:
        x = wav
        return conv_stack(x, self.convs, self.conv_post, self.negative_slope)


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, num_scales: int = 3, width: float = 1.0, pool_kernel: int = 4,
                 pool_stride: int = 2):
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(width, use_spectral_norm=(i == 0)) for i in range(num_scales))
        self.pool = nn.AvgPool1d(pool_kernel, pool_stride, padding=pool_kernel // 2)
        self.names = [f"msd_s{i}" for i in range(num_scales)]

    def forward(self, wav: Tensor) -> List[DiscOutput]:
        outs = []
        for i, d in enumerate(self.discriminators):
            if i > 0:
                wav = self.pool(wav)
            outs.append(d(wav))
        return outs
