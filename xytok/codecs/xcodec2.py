"""X-Codec 2.0 (HKUST) through transformers.Xcodec2Model: 16 kHz, 50 Hz, one FSQ codebook of
prod(quantization_levels) = 65536 codes (16 bit/frame, 800 bps) for the released model.

The encoder takes the waveform (acoustic branch) and a Kaldi log-mel fbank stacked by 2 (the
Wav2Vec2-BERT semantic branch). transformers' Xcodec2FeatureExtractor computes that fbank with
torchaudio; we compute the same features with transformers.audio_utils (numpy; the Kaldi recipe
SeamlessM4T's extractor uses), so no torchaudio is needed.

Padding, as the extractor does it: one zero sample is appended and the audio is zero-padded to a
multiple of the hop (320), so the model emits ceil((N + 1) / 320) frames; its codes mask marks the
first (N + 1) // 320 as valid, and ``encode`` keeps exactly those (1.0 s -> 50 frames, not 51).
The single codebook cannot be truncated: ``--num_quantizers`` accepts only 1.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from xytok.codecs.hf import HFCodec

# the semantic branch's fbank (Kaldi settings of Xcodec2FeatureExtractor / SeamlessM4T)
_MEL_BINS, _FRAME_LENGTH, _FRAME_SHIFT, _FFT, _STACK = 80, 400, 160, 512, 2


class Xcodec2Codec(HFCodec):
    family = "xcodec2"
    class_name = "Xcodec2Model"

    def __init__(self, name_or_dir: str, device="cpu", revision=None, num_quantizers=None):
        super().__init__(name_or_dir, device, revision)
        self.max_quantizers = 1
        self.num_quantizers = self._check_num_quantizers(num_quantizers, [1])
        self.codebook_sizes = [int(np.prod(self.config.quantization_levels))]
        self._mel_filters = None

    @staticmethod
    def frame_rate_of(config) -> float:
        return float(config.sampling_rate) / int(np.prod(config.downsampling_ratios))

    @property
    def hop_length(self) -> int:
        return int(self.config.hop_length)

    # ------------------------------------------------------------------ features
    def _fbank(self, wav: np.ndarray) -> np.ndarray:
        """Kaldi log-mel fbank (frames, 80), per-bin mean/variance normalised (unbiased variance)."""
        from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

        if self._mel_filters is None:
            self._mel_filters = mel_filter_bank(
                num_frequency_bins=_FFT // 2 + 1, num_mel_filters=_MEL_BINS, min_frequency=20,
                max_frequency=self.sample_rate // 2, sampling_rate=self.sample_rate, norm=None,
                mel_scale="kaldi", triangularize_in_mel_space=True)
            self._window = window_function(_FRAME_LENGTH, "povey", periodic=False)
        feats = spectrogram(wav * 2 ** 15, self._window, frame_length=_FRAME_LENGTH, hop_length=_FRAME_SHIFT,
                            fft_length=_FFT, power=2.0, center=False, preemphasis=0.97,
                            mel_filters=self._mel_filters, log_mel="log", mel_floor=1.192092955078125e-07,
                            remove_dc_offset=True).T
        return (feats - feats.mean(0)) / np.sqrt(feats.var(0, ddof=1) + 1e-7)

    def _model_inputs(self, wav: torch.Tensor):
        """(padded waveform (1, 1, M), stacked fbank (1, M / hop, 160), number of valid frames)."""
        hop = self.hop_length
        n = wav.numel() + 1  # the extractor's appended zero sample
        padded = torch.nn.functional.pad(wav, (0, math.ceil(n / hop) * hop - wav.numel()))
        frames = padded.numel() // hop
        # the fbank sees hop/2 zeros each side: 2 * frames fbank frames -> frames stacked pairs
        fb_in = torch.nn.functional.pad(padded, (hop // 2, hop // 2)).cpu().double().numpy()
        feats = self._fbank(fb_in)
        usable = feats.shape[0] - feats.shape[0] % _STACK
        feats = feats[:usable].reshape(usable // _STACK, _MEL_BINS * _STACK)
        feats = torch.from_numpy(feats).float().to(self.device)
        return padded.view(1, 1, -1), feats.unsqueeze(0), n // hop

    def _encode_one(self, wav):
        values, feats, valid = self._model_inputs(wav)
        codes = self.model.encode(values, input_features=feats).audio_codes[0]  # (1, T)
        return codes[:, :valid]

    def _decode_one(self, codes):
        wav = self.model.decode(audio_codes=codes.unsqueeze(0)).audio_values.reshape(-1)
        return self._fit_length(wav, codes.shape[1])

    def _embed_one(self, wav):
        # the dequantised FSQ codeword, projected back (the decoder's input), one row per kept frame
        codes = self._encode_one(wav)
        z = self.model.quantizer.from_codes(codes.transpose(0, 1).unsqueeze(0))  # (1, T, D)
        return z[0]
