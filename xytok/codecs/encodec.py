"""EnCodec (Meta) through transformers.EncodecModel: RVQ codes at 75 Hz (24 kHz model).

The number of codebooks follows a target bandwidth; ``num_quantizers`` = n picks the configured
bandwidth (``config.target_bandwidths``) that uses n codebooks (24 kHz model: 2, 4, 8, 16, 32 for
1.5, 3, 6, 12, 24 kbps). Default: transformers' default, the first (lowest) bandwidth. Mono,
unchunked models only (the 48 kHz stereo model cuts audio into 1-s chunks with scales)."""
from __future__ import annotations

from xytok.codecs.base import CodecSpecError
from xytok.codecs.hf import HFCodec


class EncodecCodec(HFCodec):
    family = "encodec"
    class_name = "EncodecModel"

    def __init__(self, name_or_dir: str, device="cpu", revision=None, num_quantizers=None):
        super().__init__(name_or_dir, device, revision)
        c = self.config
        if int(c.audio_channels) != 1 or c.chunk_length is not None:
            raise CodecSpecError(f"encodec {name_or_dir}: only mono, unchunked EnCodec models are supported "
                                 f"(audio_channels={c.audio_channels}, chunk_length_s={c.chunk_length_s})")
        q = self.model.quantizer
        self.max_quantizers = int(q.num_quantizers)
        by_nq = {int(q.get_num_quantizers_for_bandwidth(bw)): bw for bw in c.target_bandwidths}
        if num_quantizers is None:
            self.bandwidth = c.target_bandwidths[0]
            self.num_quantizers = int(q.get_num_quantizers_for_bandwidth(self.bandwidth))
        else:
            self.num_quantizers = self._check_num_quantizers(num_quantizers, sorted(by_nq))
            self.bandwidth = by_nq[self.num_quantizers]
        self.codebook_sizes = [int(c.codebook_size)] * self.num_quantizers

    @staticmethod
    def frame_rate_of(config) -> float:
        return float(config.frame_rate)

    def describe(self) -> dict:
        return {**super().describe(), "bandwidth_kbps": self.bandwidth}

    def _encode_one(self, wav):
        out = self.model.encode(wav.view(1, 1, -1), bandwidth=self.bandwidth)
        return out.audio_codes[0, 0]  # (chunks=1, B=1, nq, T)

    def _decode_one(self, codes):
        wav = self.model.decode(codes.view(1, 1, *codes.shape), [None]).audio_values.reshape(-1)
        return self._fit_length(wav, codes.shape[1])

    def _embed_one(self, wav):
        z = self.model.quantizer.decode(self._encode_one(wav).unsqueeze(1))  # (nq, B, T) -> (B, D, T)
        return z[0].transpose(0, 1)
