"""Streaming decode for a decoder trained chunk-causal in stage 2: codes in as they arrive, audio out.

A streaming model has (generator_params; see egs/*/conf/train_stage2_streaming*.yaml)::

    post_rvq_adapter_kwargs: {causal: true, chunk_frames: C, lookahead_frames: K}   # code frames
    acoustic_decoder_kwargs: {causal: true, chunk_frames: D}                        # 50 Hz frames
    vocos_kwargs:            {causal: true}

Dependencies (xytok.nn.transformer / decoder / vocos): the adapter's output for chunk c needs the
codes up to (c + 1) C + K - 1 (look-ahead in its first layer only, so it does not compound with
depth); the x4 upsample is frame-wise; the acoustic decoder is strictly chunk-causal in chunks of D
50 Hz frames and its transposed convs are causal; Vocos' convs are causal; the ISTFT head's sample s
needs frames <= (s + (n_fft - hop) / 2) // hop, so the last (n_fft - hop) / 2 samples of what is
decoded wait for the next frames (the "ISTFT tail", 15 ms at 16 kHz).

``StreamingDecoder`` keeps, per stream, the key/value caches of every attention layer, the
left-context buffers of the transposed convs and of the 31 Vocos convs, and the ISTFT's overlap-add
buffer with its window envelope, and computes each frame once. Its output equals the offline
``XYTokenizer.decode`` of the same model (max abs difference ~1e-6, float summation order), for
any feed pattern.

Long inputs (past the 30-s positional tables): ``decode`` windows codes like the released decode:
window k covers codes [k*keep, k*keep + 375) and keeps its first ``keep`` frames' audio (keep = 250
for the default overlap_seconds=10), each window decoded from its own start. The stream does the
same: a new window state starts every ``keep`` codes, the previous window runs on until its kept
audio is out (about C + K + 1 more codes), so the output matches ``decode`` at any length; as in
the released decode, each window restarts without left context (every 20 s by default).

Algorithmic latency (``latency``): codes arrive in real time, code t when its 80 ms of audio ended;
a sample's latency is the time its audio is emitted minus its own time stamp; the worst case is
(C + K) code frames + the ISTFT tail when D = 4 C (255 ms for C=1, K=2 at 16 kHz).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from xytok.pretrained import resolve_rates

__all__ = ["StreamingDecoder", "StreamingSpec", "NotStreamableError", "streaming_spec", "spec_from_params",
           "decode_stream", "latency"]


class NotStreamableError(ValueError):
    """The model's decoder was not trained chunk-causal, so a stream cannot match its decode."""


@dataclass(frozen=True)
class StreamingSpec:
    chunk_frames: int            # C: code frames per adapter chunk
    lookahead_frames: int        # K: code frames of look-ahead (adapter's first layer)
    decoder_chunk_frames: int    # D: acoustic-decoder chunk in its own (upsampled) frames
    upsample: int                # decoder frames per code frame (4)
    feature_upsample: int        # Vocos frames per decoder frame (2)
    hop: int                     # output samples per Vocos frame
    n_fft: int
    sample_rate: int             # output rate (codec.sample_rate)

    @property
    def samples_per_code(self) -> int:
        return self.upsample * self.feature_upsample * self.hop

    @property
    def istft_tail(self) -> int:
        """Samples held back until the next frames arrive: (n_fft - hop) / 2."""
        return (self.n_fft - self.hop) // 2

    # How far each stage can get; `final` = no more codes will come (end of input or window).
    def adapter_ready(self, codes: int, final: bool) -> int:
        if final:
            return codes
        return max(0, (codes - self.lookahead_frames) // self.chunk_frames * self.chunk_frames)

    def decoder_ready(self, frames: int, final: bool) -> int:
        return frames if final else frames // self.decoder_chunk_frames * self.decoder_chunk_frames

    def samples_ready(self, codes: int, final: bool = False) -> int:
        """Output samples final after `codes` code frames (of one window)."""
        vocos_frames = self.feature_upsample * self.decoder_ready(
            self.upsample * self.adapter_ready(codes, final), final)
        if final:
            return vocos_frames * self.hop
        return max(0, vocos_frames * self.hop - self.istft_tail)


def streaming_spec(codec) -> StreamingSpec:
    """The streaming geometry of ``codec``; NotStreamableError if its decoder is not causal."""
    adapter, decoder, vocos, upsample = codec.post_rvq_adapter, codec.acoustic_decoder, codec.vocos, codec.upsample
    not_causal = [name for name, module in (("post_rvq_adapter_kwargs", adapter),
                                            ("acoustic_decoder_kwargs", decoder), ("vocos_kwargs", vocos))
                  if not getattr(module, "causal", False)]
    if not_causal:
        raise NotStreamableError(
            "this model's decoder was not trained causal (generator_params: "
            + ", ".join(f"{n}.causal is not true" for n in not_causal)
            + "), so a stream cannot reproduce its decode: decode_stream / --streaming need a decoder "
            "trained with the streaming option (stage 2 with conf/train_stage2_streaming.yaml); "
            "use decode() for this model")
    if getattr(decoder, "lookahead_frames", 0):
        raise NotStreamableError("acoustic_decoder_kwargs.lookahead_frames must be 0 (the look-ahead "
                                 "belongs to post_rvq_adapter_kwargs)")
    if upsample.up_conv.kernel_size[0] != upsample.stride:
        raise NotStreamableError("upsample: kernel != stride, its windows overlap (not supported)")
    if decoder.deconv1.kernel_size[0] != 3 or decoder.deconv2.kernel_size[0] != 3 or \
            decoder.deconv2.stride[0] != 1:
        raise NotStreamableError("acoustic_decoder: streaming supports kernel_size 3 (the released decoder)")
    istft = vocos.head.istft
    return StreamingSpec(adapter.chunk_frames, adapter.lookahead_frames, decoder.chunk_frames, upsample.stride,
                         decoder.stride_size, istft.hop_length, istft.n_fft, int(codec.sample_rate))


def spec_from_params(params: dict) -> StreamingSpec:
    """``streaming_spec`` from a config's generator_params, without building the model (RESULTS.md);
    NotStreamableError if its decoder side is not causal. Defaults = the module constructors'."""
    params = params.get("generator_params", params)
    adapter = params.get("post_rvq_adapter_kwargs", {})
    decoder = params.get("acoustic_decoder_kwargs", {})
    vocos = params.get("vocos_kwargs", {})
    not_causal = [f"{n}.causal is not true" for n, kw in (("post_rvq_adapter_kwargs", adapter),
                                                          ("acoustic_decoder_kwargs", decoder),
                                                          ("vocos_kwargs", vocos)) if kw.get("causal") is not True]
    if not_causal:
        raise NotStreamableError("not a streaming model: " + ", ".join(not_causal))
    upsample = int(params.get("upsample_kwargs", {}).get("stride", 4))
    feature_upsample = int(decoder.get("stride_size", 2))
    hop, n_fft = int(vocos.get("hop_size", 160)), int(vocos.get("n_fft", 640))
    sample_rate = resolve_rates(params, "generator_params")["output_sample_rate"]
    return StreamingSpec(int(adapter.get("chunk_frames", 0)), int(adapter.get("lookahead_frames", 0)),
                         int(decoder.get("chunk_frames", 0)), upsample, feature_upsample, hop, n_fft, sample_rate)


def latency(spec: StreamingSpec) -> dict:
    """Algorithmic latency in ms (module docstring), from the readiness rules the stream uses.

    Code t arrives at (t + 1) * frame; after n codes, samples [0, samples_ready(n)) are out. The
    first sample not out after n - 1 codes leaves at n * frame: latency n * frame - its time."""
    frame_ms = 1000.0 * spec.samples_per_code / spec.sample_rate
    worst = 0.0
    for n in range(1, 8 * (spec.chunk_frames + spec.decoder_chunk_frames) + spec.lookahead_frames + 8):
        first_waiting = spec.samples_ready(n - 1)
        if spec.samples_ready(n) > first_waiting:
            worst = max(worst, n * frame_ms - 1000.0 * first_waiting / spec.sample_rate)
    return {"chunk_frames": spec.chunk_frames, "lookahead_frames": spec.lookahead_frames,
            "decoder_chunk_frames": spec.decoder_chunk_frames, "code_frame_ms": frame_ms,
            "istft_tail_ms": 1000.0 * spec.istft_tail / spec.sample_rate, "algorithmic_latency_ms": worst}


class _StackStream:
    """One TransformerStack (the post-RVQ adapter or the acoustic decoder) run chunk by chunk with
    per-layer key/value caches; layer 0 also sees ``lookahead`` frames past the chunk."""

    def __init__(self, stack, chunk: int, lookahead: int, device):
        self.stack, self.chunk, self.lookahead = stack, chunk, lookahead
        attn = stack.layers[0].self_attn
        self.heads, self.head_dim = attn.num_heads, attn.head_dim
        self.keys: List[torch.Tensor] = [None] * len(stack.layers)
        self.values: List[torch.Tensor] = [None] * len(stack.layers)
        self.cached = [0] * len(stack.layers)
        self.pending = torch.zeros(1, 0, stack.d_model, device=device)  # layer-0 inputs not yet run
        self.received = 0  # frames given to add_inputs
        self.done = 0      # frames output

    def _append(self, layer_index: int, normed: torch.Tensor) -> None:
        attn = self.stack.layers[layer_index].self_attn
        k, v = attn._heads(attn.k_proj(normed)), attn._heads(attn.v_proj(normed))
        n0, n = self.cached[layer_index], normed.shape[1]
        cache = self.keys[layer_index]
        if cache is None or cache.shape[2] < n0 + n:  # grow by doubling (no copy per frame)
            size = min(self.stack.max_positions, max(n0 + n, 2 * (0 if cache is None else cache.shape[2]), 16))
            grown_k = k.new_zeros(1, self.heads, size, self.head_dim)
            grown_v = v.new_zeros(1, self.heads, size, self.head_dim)
            if cache is not None:
                grown_k[:, :, :n0] = cache[:, :, :n0]
                grown_v[:, :, :n0] = self.values[layer_index][:, :, :n0]
            self.keys[layer_index], self.values[layer_index] = grown_k, grown_v
        self.keys[layer_index][:, :, n0:n0 + n] = k
        self.values[layer_index][:, :, n0:n0 + n] = v
        self.cached[layer_index] = n0 + n

    def add_inputs(self, h: torch.Tensor) -> None:
        """h (1, n, d_model): the next frames, before the positional table."""
        n = h.shape[1]
        if self.received + n > self.stack.max_positions:
            raise ValueError(f"{type(self.stack).__name__}: {self.received + n} steps exceed the "
                             f"{self.stack.max_positions}-row positional table")
        x = h + self.stack.positional_embedding[self.received:self.received + n].to(h.dtype)
        self._append(0, self.stack.layers[0].self_attn_layer_norm(x))
        self.pending = torch.cat([self.pending, x], dim=1)
        self.received += n

    def _allowed(self, rows: range, keys: int, lookahead: int) -> Optional[torch.Tensor]:
        q = torch.arange(rows.start, rows.stop, device=self.pending.device)
        limit = (q // self.chunk + 1) * self.chunk + lookahead
        allowed = torch.arange(keys, device=q.device)[None, :] < limit[:, None]
        return None if bool(allowed.all()) else allowed

    def run(self, upto: int) -> torch.Tensor:
        """Output (1, upto - done, d_model) of frames [done, upto) (final LayerNorm applied)."""
        rows = range(self.done, upto)
        h = self.pending[:, :len(rows)]
        self.pending = self.pending[:, len(rows):]
        for i, layer in enumerate(self.stack.layers):
            attn = layer.self_attn
            normed = layer.self_attn_layer_norm(h)
            if i == 0:
                keys = min(self.received, (rows.stop - 1) // self.chunk * self.chunk + self.chunk + self.lookahead)
                mask = self._allowed(rows, keys, self.lookahead)
            else:
                self._append(i, normed)
                keys = rows.stop
                mask = self._allowed(rows, keys, 0)
            q = attn._heads(attn.q_proj(normed) * attn.scaling)
            out = F.scaled_dot_product_attention(q, self.keys[i][:, :, :keys], self.values[i][:, :, :keys],
                                                 attn_mask=mask, scale=1.0)
            h = h + attn.out_proj(out.transpose(1, 2).reshape(1, len(rows), attn.embed_dim))
            h = h + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(h))))
        self.done = upto
        return self.stack.layer_norm(h)


class _CausalConvContext:
    """Left-context buffer for a conv run piecewise: the last ``size`` inputs (zeros at the start,
    i.e. the offline left padding)."""

    def __init__(self, channels: int, size: int, device):
        self.buffer = torch.zeros(1, channels, size, device=device)
        self.size = size

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        full = torch.cat([self.buffer, x], dim=2)
        self.buffer = full[:, :, full.shape[2] - self.size:]
        return full


class _WindowStream:
    """The decoder side of one decode window, fed code embeddings (zq) and emitting final audio."""

    def __init__(self, codec, spec: StreamingSpec, start_code: int, max_codes: int, keep_samples: int):
        device = codec.device
        self.codec, self.spec = codec, spec
        self.start_code, self.max_codes, self.keep_samples = start_code, max_codes, keep_samples
        self.adapter = _StackStream(codec.post_rvq_adapter, spec.chunk_frames, spec.lookahead_frames, device)
        self.decoder = _StackStream(codec.acoustic_decoder, spec.decoder_chunk_frames, 0, device)
        decoder, backbone = codec.acoustic_decoder, codec.vocos.backbone
        # deconv1 output n reads decoder frames >= (n - 2) // 2: one frame of context; deconv2 two.
        self.deconv1_context = _CausalConvContext(decoder.deconv1.in_channels, 1, device)
        self.deconv2_context = _CausalConvContext(decoder.deconv2.in_channels, 2, device)
        pad = backbone.embed.kernel_size[0] - 1
        self.embed_context = _CausalConvContext(backbone.embed.in_channels, pad, device)
        self.block_contexts = [_CausalConvContext(b.dwconv.in_channels, b.dwconv.kernel_size[0] - 1, device)
                               for b in backbone.convnext]
        istft = codec.vocos.head.istft
        self.window_sq = istft.window.square()
        self.overlap = torch.zeros(0, device=device)    # overlap-add sums from position `base`
        self.envelope = torch.zeros(0, device=device)   # window^2 sums, same positions
        self.base = 0            # ISTFT ("full" signal) position of overlap[0]
        self.emit_from = spec.istft_tail  # "same" padding cuts the first (n_fft - hop)/2 samples
        self.frames = 0          # Vocos frames overlap-added so far
        self.codes = 0
        self.emitted = 0
        self.final = False

    @property
    def finished(self) -> bool:
        return self.final or self.emitted >= self.keep_samples

    def accepts(self) -> int:
        """How many more codes this window takes."""
        return 0 if self.final else self.max_codes - self.codes

    def push(self, zq: torch.Tensor) -> torch.Tensor:
        """zq (1, Dz, n) of the window's next codes -> newly final samples (1-D, kept part only)."""
        adapter = self.codec.post_rvq_adapter
        h = zq.transpose(1, 2)
        if adapter.proj is not None:
            h = adapter.proj(h)
        if h.shape[1]:
            self.adapter.add_inputs(h)
        self.codes += zq.shape[2]
        if self.codes >= self.max_codes:
            self.final = True  # the offline window ends here
        return self._advance()

    def finish(self) -> torch.Tensor:
        self.final = True
        return self._advance()

    def _advance(self) -> torch.Tensor:
        spec, codec = self.spec, self.codec
        ready = spec.adapter_ready(self.codes, self.final)
        if ready > self.adapter.done:
            post = self.adapter.run(ready)
            if codec.post_rvq_adapter.out_proj is not None:
                post = codec.post_rvq_adapter.out_proj(post)
            up = codec.upsample.up_conv(post.transpose(1, 2))  # kernel = stride: frame by frame
            self.decoder.add_inputs(up.transpose(1, 2))
        ready = spec.decoder_ready(self.decoder.received, self.final)
        if ready > self.decoder.done:
            self._vocos(self._deconvs(self.decoder.run(ready).transpose(1, 2)))
        end = self.frames * spec.hop + (spec.istft_tail if self.final else 0)
        return self._emit(end)

    def _deconvs(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder frames (1, D, n) -> their 2n feature frames, exactly as AudioDecoder.forward."""
        decoder, n = self.codec.acoustic_decoder, h.shape[2]
        first = self.deconv1_context.size if self.decoder.done - n > 0 else 0
        x = self.deconv1_context.extend(h)[:, :, self.deconv1_context.size - first:]
        g = F.gelu(decoder.deconv1(x))[:, :, 2 * first: 2 * first + 2 * n]
        first2 = self.deconv2_context.size if self.decoder.done - n > 0 else 0
        y = self.deconv2_context.extend(g)[:, :, self.deconv2_context.size - first2:]
        return F.gelu(decoder.deconv2(y))[:, :, first2: first2 + 2 * n]

    def _vocos(self, feats: torch.Tensor) -> None:
        vocos = self.codec.vocos
        backbone, istft = vocos.backbone, vocos.head.istft
        h = backbone.embed(self.embed_context.extend(feats))
        h = backbone.norm(h.transpose(1, 2)).transpose(1, 2)
        for block, context in zip(backbone.convnext, self.block_contexts):
            h = h + block.branch(block.dwconv(context.extend(h)))
        frames = istft.windowed_frames(vocos.head.spectrum(backbone.final_layer_norm(h.transpose(1, 2))))
        n, n_fft, hop = frames.shape[2], istft.n_fft, istft.hop_length
        length = (n - 1) * hop + n_fft
        summed = F.fold(frames, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))[0, 0, 0]
        env = F.fold(self.window_sq[None, :, None].expand(1, -1, n), output_size=(1, length),
                     kernel_size=(1, n_fft), stride=(1, hop))[0, 0, 0]
        start = self.frames * hop - self.base
        if self.overlap.numel() < start + length:
            grow = start + length - self.overlap.numel()
            self.overlap = torch.cat([self.overlap, self.overlap.new_zeros(grow)])
            self.envelope = torch.cat([self.envelope, self.envelope.new_zeros(grow)])
        self.overlap[start:start + length] += summed
        self.envelope[start:start + length] += env
        self.frames += n

    def _emit(self, end: int) -> torch.Tensor:
        """Samples at ISTFT positions [emit_from, end): every frame that overlaps them is in."""
        if end <= self.emit_from:
            return self.overlap.new_zeros(0)
        lo, hi = self.emit_from - self.base, end - self.base
        out = self.overlap[lo:hi] / self.envelope[lo:hi]
        self.overlap, self.envelope = self.overlap[hi:], self.envelope[hi:]
        self.base = self.emit_from = end
        out = out[:max(0, self.keep_samples - self.emitted)]
        self.emitted += out.numel()
        return out


class StreamingDecoder:
    """Stateful streaming decoder for one utterance at a time.

    push(codes (nq, n)) -> the audio (1-D float32, CPU) that became final; finish() -> the rest,
    after which the decoder is reset for the next utterance (reset() does it explicitly).
    ``overlap_seconds`` and ``num_quantizers`` mean what they mean for ``XYTokenizer.decode``.
    """

    def __init__(self, codec, overlap_seconds: float = 10, num_quantizers: Optional[int] = None):
        self.codec = codec
        self.spec = streaming_spec(codec)
        self.num_quantizers = codec._num_layers(num_quantizers)
        _, self.keep_codes = codec._chunking(overlap_seconds)
        self.window_codes = codec.window_codes
        self.reset()

    @property
    def latency(self) -> dict:
        return latency(self.spec)

    def reset(self) -> None:
        self.windows: List[_WindowStream] = []
        self.codes_in = 0
        self.pieces_in = 0
        self._started = 0  # decode windows begun
        self.held: List[List[torch.Tensor]] = []  # output of windows behind the first unfinished one

    def _check(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(np.asarray(codes) if isinstance(codes, np.ndarray) else codes)
        if codes.dim() == 2 and codes.shape[1] == 0:
            return codes.new_zeros(self.num_quantizers, 0).long()
        try:
            return self.codec._check_codes([codes], self.num_quantizers)[0]
        except ValueError as exc:
            where = f"code piece {self.pieces_in} (from frame {self.codes_in})"
            raise ValueError(str(exc).replace("item 0", where, 1)) from None

    @torch.no_grad()
    def push(self, codes) -> torch.Tensor:
        codes = self._check(codes)
        self.pieces_in += 1
        if codes.shape[1] == 0:
            return torch.zeros(0)
        zq = self.codec.decode_codes(codes[:, None, :].to(self.codec.device), self.num_quantizers)
        outputs = [[] for _ in self.windows]
        pos = 0
        while pos < zq.shape[2]:
            absolute = self.codes_in + pos
            if absolute == self._started * self.keep_codes:  # a new decode window starts here
                self.windows.append(_WindowStream(self.codec, self.spec, absolute, self.window_codes,
                                                  self.keep_codes * self.spec.samples_per_code))
                outputs.append([])
                self._started += 1
            # feed every live window up to the next window start (or the end of this piece)
            stop = min(zq.shape[2], pos + self._started * self.keep_codes - absolute)
            for i, window in enumerate(self.windows):
                take = min(stop - pos, window.accepts())
                if take > 0 and not window.finished:
                    outputs[i].append(window.push(zq[:, :, pos:pos + take]))
            pos = stop
        self.codes_in += zq.shape[2]
        return self._collect(outputs)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """End of the utterance: the remaining audio; then the decoder is reset."""
        outputs = [[w.finish()] if not w.final else [] for w in self.windows]
        out = self._collect(outputs, flush=True)
        self.reset()
        return out

    def _collect(self, outputs, flush: bool = False) -> torch.Tensor:
        """Concatenate audio in window order: a window's audio waits until the windows before it
        are done; finished windows are dropped."""
        for i, parts in enumerate(outputs):
            while len(self.held) <= i:
                self.held.append([])
            self.held[i].extend(p for p in parts if p.numel())
        ready = []
        while self.windows:
            ready.extend(self.held[0])
            self.held[0] = []
            if not (self.windows[0].finished or flush):
                break
            self.windows.pop(0)
            self.held.pop(0)
        if flush:
            for parts in self.held:
                ready.extend(parts)
            self.held = []
        return torch.cat(ready).float().cpu() if ready else torch.zeros(0)


def decode_stream(codec, codes, frames_per_push: Optional[int] = None, overlap_seconds: float = 10,
                  num_quantizers: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Stream one utterance: yields 1-D float32 CPU audio pieces (non-empty) as they become final.

    ``codes``: a (nq, T) tensor/array, fed ``frames_per_push`` frames at a time (default: the
    model's chunk), or an iterable of (nq, n) pieces in arrival order. Concatenated, the pieces
    equal ``codec.decode([codes], overlap_seconds, num_quantizers=...)[0]`` (<= 1e-4)."""
    decoder = StreamingDecoder(codec, overlap_seconds, num_quantizers)  # errors now, not at first next()
    if torch.is_tensor(codes) or isinstance(codes, np.ndarray):
        if codes.ndim != 2 or codes.shape[1] == 0:
            raise ValueError(f"codes must be (nq, T) with T >= 1, got shape {tuple(codes.shape)}")
        step = decoder.spec.chunk_frames if frames_per_push is None else frames_per_push
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"frames_per_push must be an integer >= 1, got {frames_per_push!r}")
        pieces: Iterable = [codes[:, i:i + step] for i in range(0, codes.shape[1], int(step))]
    else:
        pieces = codes
    return _stream(decoder, pieces)


def _stream(decoder: StreamingDecoder, pieces: Iterable) -> Iterator[torch.Tensor]:
    for piece in pieces:
        out = decoder.push(piece)
        if out.numel():
            yield out
    if decoder.codes_in == 0:
        raise ValueError("decode_stream: no code frames were given")
    out = decoder.finish()
    if out.numel():
        yield out
