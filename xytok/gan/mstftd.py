"""Multi-scale STFT discriminator (EnCodec, Défossez et al. 2022).

Each sub-discriminator sees the complex STFT (real and imaginary parts as two channels) at one
resolution, so it can judge phase as well as magnitude — the part a mel loss cannot supervise.
Convs are dilated along time and strided along frequency.
"""
from typing import List, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

from xytok.gan.mpd import DiscOutput, conv_stack

Tensor = torch.Tensor


class STFTDiscriminator(nn.Module):
    def __init__(self, n_fft: int, hop_length: int, win_length: int, filters: int = 32,
                 max_filters: int = 1024, filters_scale: int = 1,
                 dilations: Sequence[int] = (1, 2, 4), negative_slope: float = 0.2):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.negative_slope = negative_slope
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        # layout: (time, freq) 2-D convs; kernel (3, 9) with frequency stride 2
        convs = [weight_norm(nn.Conv2d(2, filters, (3, 9), padding=(1, 4)))]
        in_ch = filters
        for i, d in enumerate(dilations):
            out_ch = min(filters_scale ** (i + 1) * filters, max_filters)
            convs.append(weight_norm(nn.Conv2d(in_ch, out_ch, (3, 9), stride=(1, 2),
                                               dilation=(d, 1), padding=(d, 4))))
            in_ch = out_ch
        out_ch = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        convs.append(weight_norm(nn.Conv2d(in_ch, out_ch, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(out_ch, 1, (3, 3), padding=(1, 1)))

    def spectrogram(self, wav: Tensor) -> Tensor:
        """(B, 1, N) -> (B, 2, frames, n_fft//2+1), normalised complex STFT, always float32."""
        x = wav.squeeze(1).float()
        spec = torch.stft(x, self.n_fft, self.hop_length, self.win_length,
                          window=self.window.to(x.device), normalized=True, center=True,
                          return_complex=True)
        spec = torch.view_as_real(spec)  # (B, F, T, 2)
        return spec.permute(0, 3, 2, 1).contiguous()

    def forward(self, wav: Tensor) -> DiscOutput:
        x = self.spectrogram(wav)
        return conv_stack(x, self.convs, self.conv_post, self.negative_slope)


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, n_ffts: Sequence[int] = (1024, 2048, 512),
                 hop_lengths: Sequence[int] = (256, 512, 128),
                 win_lengths: Sequence[int] = (1024, 2048, 512), filters: int = 32,
                 max_filters: int = 1024, filters_scale: int = 1):
        super().__init__()
        if not (len(n_ffts) == len(hop_lengths) == len(win_lengths)):
            raise ValueError(f"mstftd: n_ffts {list(n_ffts)}, hop_lengths {list(hop_lengths)} and "
                             f"win_lengths {list(win_lengths)} must have the same length")
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(n, h, w, filters, max_filters, filters_scale)
            for n, h, w in zip(n_ffts, hop_lengths, win_lengths))
        self.names = [f"mstftd_{n}" for n in n_ffts]

    def forward(self, wav: Tensor) -> List[DiscOutput]:
        return [d(wav) for d in self.discriminators]
