"""DAC (Descript Audio Codec) through transformers.DacModel: RVQ codes at sample_rate / hop_length.

``num_quantizers`` = n keeps the first n codebooks (DAC's quantizer dropout trains every prefix;
e.g. 2 or 8 of the 16 kHz model's 12)."""
from __future__ import annotations


from xytok.codecs.hf import HFCodec


class DacCodec(HFCodec):
    family = "dac"
    class_name = "DacModel"

    def __init__(self, name_or_dir: str, device="cpu", revision=None, num_quantizers=None):
        super().__init__(name_or_dir, device, revision)
        c = self.config
        self.max_quantizers = int(c.n_codebooks)
        self.num_quantizers = self._check_num_quantizers(num_quantizers)
        self.codebook_sizes = [int(c.codebook_size)] * self.num_quantizers

    @staticmethod
    def frame_rate_of(config) -> float:
        return config.sampling_rate / config.hop_length

    def _encode_one(self, wav):
        out = self.model.encode(wav.view(1, 1, -1), n_quantizers=self.num_quantizers)
        return out.audio_codes[0, : self.num_quantizers]

    def _decode_one(self, codes):
        wav = self.model.decode(audio_codes=codes.unsqueeze(0)).audio_values.reshape(-1)
        return self._fit_length(wav, codes.shape[1])

    def _embed_one(self, wav):
        # the sum of the first num_quantizers codewords (after out-projection): what decode() sees
        codes = self._encode_one(wav).unsqueeze(0)
        z = self.model.quantizer.from_codes(codes)[0]
        return z[0].transpose(0, 1)
