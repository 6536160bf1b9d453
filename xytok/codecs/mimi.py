"""Mimi (Kyutai) through transformers.MimiModel: split RVQ (semantic + acoustic) at 12.5 Hz, 24 kHz.

``num_quantizers`` = n keeps the first n codebooks (e.g. 8 of 32, Moshi's setting); the first
``num_semantic_quantizers`` rows are the semantic (WavLM-distilled) ones."""
from __future__ import annotations

from xytok.codecs.hf import HFCodec


class MimiCodec(HFCodec):
    family = "mimi"
    class_name = "MimiModel"

    def __init__(self, name_or_dir: str, device="cpu", revision=None, num_quantizers=None):
        super().__init__(name_or_dir, device, revision)
        c = self.config
        self.max_quantizers = int(c.num_quantizers)
        # the semantic codebook(s) come first and cannot be dropped
        self.num_quantizers = self._check_num_quantizers(
            num_quantizers, range(int(c.num_semantic_quantizers), self.max_quantizers + 1))
        self.codebook_sizes = [int(c.codebook_size)] * self.num_quantizers

    @property
    def hop_length(self) -> int:
        return int(self.config.frame_size)

    def _encode_one(self, wav):
        out = self.model.encode(wav.view(1, 1, -1), num_quantizers=self.num_quantizers)
        return out.audio_codes[0]

    def _decode_one(self, codes):
        wav = self.model.decode(codes.unsqueeze(0)).audio_values.reshape(-1)
        return self._fit_length(wav, codes.shape[1])

    def _embed_one(self, wav):
        # quantizer output (sum of the semantic and acoustic codewords, projected): the decoder's input
        z = self.model.quantizer.decode(self._encode_one(wav).unsqueeze(0))
        return z[0].transpose(0, 1)
