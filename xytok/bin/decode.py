"""Decode XY-Tokenizer codes back to audio at the model's output rate (16 kHz; 24/32 kHz decoders).

    xytok decode --config C --checkpoint K IN OUT_DIR
    python -m xytok.bin.decode --model_dir exp/x/export codes.scp OUT_DIR

IN:      codes as written by ``xytok encode``: a ``.scp``/``.ark`` file or a directory of
         ``<utt>.npy`` arrays (nq, T).
OUT_DIR: receives ``<utt>.wav`` (the codec's output rate, 16-bit PCM, U*T samples: U = 1280 at
         16 kHz, 1920 at 24 kHz, 2560 at 32 kHz; the config's decoder_upsample_rate) and ``wav.scp``
         (``uttid OUT_DIR/uttid.wav``, LC_ALL=C sorted, successful utterances only).

--num_quantizers N decodes from the first N RVQ layers only (a lower bit rate, logged:
N * log2(codebook size) * 12.5 bps); codes may then hold N..nq rows. Default: all layers.

--streaming decodes each utterance with the model's streaming decoder (a decoder trained causal
in stage 2, conf/train_stage2_streaming.yaml; xytok.streaming): codes are pushed --stream_frames
at a time (default: the model's chunk) and audio is written as it comes; the wavs equal the offline
decode's (<= 1e-4). It logs the algorithmic latency and, measured, the time to first audio (compute
only: codes pushed without waiting) and the RTF, and writes them to OUT_DIR/streaming.json.

Other codecs: ``--model FAMILY:ID_OR_DIR`` (dac, encodec, mimi; see xytok.codecs) decodes that
codec's codes to wavs at its own sample rate (hop * T samples; e.g. 24 kHz for Mimi/EnCodec);
--num_quantizers N decodes from the first N rows.

Utterances whose codes are unreadable, have the wrong number of quantizers, or hold indices
outside the codebook are skipped with a per-utterance error; the rest are written and the
failures are listed at the end with exit status 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Tuple

from xytok.cli import (CLIError, add_model_args, load_family_codec, load_model, log_throughput, logger,
                       model_family, quantizer_shape, report_failures, run_isolating_failures, run_main,
                       setup_logging)
from xytok.data.datadir import write_table


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xytok decode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="codes .scp/.ark file or directory of <utt>.npy")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="output directory for <utt>.wav and wav.scp")
    add_model_args(parser)
    parser.add_argument("--subtype", default="PCM_16", help="soundfile subtype of the output wavs (PCM_16, FLOAT, ...)")
    parser.add_argument("--num_quantizers", type=_positive_int, default=None, metavar="N",
                        help="decode from the first N RVQ layers (1..nq; default: all)")
    parser.add_argument("--streaming", action="store_true",
                        help="stream each utterance through the model's causal decoder (xytok.streaming); "
                        "logs latency, time to first audio and RTF into OUT_DIR/streaming.json")
    parser.add_argument("--stream_frames", type=_positive_int, default=None, metavar="N",
                        help="with --streaming: code frames per push (default: the model's chunk)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def check_codes(codes, num_quantizers: int, codebook_size: int, use_quantizers: int | None = None) -> str:
    """Empty string if the (nq, T) codes can be decoded by this model, else the reason.

    ``use_quantizers`` = n: only the first n rows are decoded, so n..num_quantizers rows are fine."""
    if codes.ndim != 2:
        return f"codes must be (nq, T), got shape {tuple(codes.shape)}"
    nq, t = codes.shape
    need = num_quantizers if use_quantizers is None else use_quantizers
    if not need <= nq <= num_quantizers:
        rows = f"{num_quantizers}" if need == num_quantizers else f"{need}..{num_quantizers} (--num_quantizers {need})"
        return f"wrong number of quantizers: codes have nq={nq}, the model has {num_quantizers}, decoding needs {rows}"
    if t == 0:
        return "no frames (T=0)"
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= codebook_size:
        return f"code index out of range: values span [{lo}, {hi}], valid is [0, {codebook_size - 1}]"
    return ""


def _decode_group(codec, codes_list, device, overlap_seconds, num_quantizers=None):
    import torch

    tensors = [torch.from_numpy(c).long().to(device) for c in codes_list]
    with torch.inference_mode():
        # one model call per group; the codec batches its 30-s chunks up to len(tensors)
        return codec.decode(tensors, overlap_seconds=overlap_seconds, batch_size=len(tensors),
                            num_quantizers=num_quantizers)


class _Streamer:
    """--streaming: one StreamingDecoder, reset per utterance, with latency bookkeeping."""

    def __init__(self, codec, overlap_seconds, num_quantizers, frames_per_push):
        from xytok.streaming import NotStreamableError, StreamingDecoder

        try:
            self.decoder = StreamingDecoder(codec, overlap_seconds, num_quantizers)
        except NotStreamableError as e:
            raise CLIError(f"--streaming: {e}")
        self.step = frames_per_push or self.decoder.spec.chunk_frames
        self.first_audio, self.compute, self.samples = [], 0.0, 0
        lat = self.decoder.latency
        logger.info("streaming: chunk %d code frame(s), look-ahead %d, pushed %d frame(s) at a time; algorithmic "
                    "latency %.0f ms ((chunk + look-ahead) x %.0f ms + %.0f ms ISTFT tail)", lat["chunk_frames"],
                    lat["lookahead_frames"], self.step, lat["algorithmic_latency_ms"], lat["code_frame_ms"],
                    lat["istft_tail_ms"])

    def decode_items(self, items):
        import torch

        out = []
        for codes in items:
            codes = torch.from_numpy(codes).long()
            pieces, start, first = [], time.perf_counter(), None
            try:
                with torch.inference_mode():
                    for i in range(0, codes.shape[1], self.step):
                        piece = self.decoder.push(codes[:, i:i + self.step])
                        if piece.numel() and first is None:
                            first = time.perf_counter() - start
                        pieces.append(piece)
                    pieces.append(self.decoder.finish())  # also resets it for the next utterance
            except Exception:
                self.decoder.reset()  # the next utterance starts clean
                raise
            if first is None:
                first = time.perf_counter() - start
            self.compute += time.perf_counter() - start
            self.first_audio.append(first)
            wav = torch.cat(pieces)
            self.samples += wav.numel()
            out.append(wav)
        return out

    def report(self, path, sample_rate):
        import json

        firsts = sorted(self.first_audio)
        lat = dict(self.decoder.latency)
        audio_s = self.samples / sample_rate
        lat.update({"frames_per_push": self.step, "utterances": len(firsts), "audio_seconds": audio_s,
                    "compute_seconds": self.compute, "rtf": self.compute / max(audio_s, 1e-9),
                    "first_audio_compute_ms_mean": 1000 * sum(firsts) / max(len(firsts), 1),
                    "first_audio_compute_ms_max": 1000 * (firsts[-1] if firsts else 0.0),
                    "note": "first audio = compute time from the first push to the first samples out, codes "
                            "pushed without waiting; in real time add (chunk + look-ahead) code frames"})
        with open(path, "w") as f:
            json.dump(lat, f, indent=1)
        logger.info("streaming: time to first audio (compute) mean %.1f ms, max %.1f ms; RTF %.3f over %.1f s; "
                    "-> %s", lat["first_audio_compute_ms_mean"], lat["first_audio_compute_ms_max"], lat["rtf"],
                    audio_s, path)


def _run(args) -> int:
    from tqdm import tqdm

    from xytok.audio import write_wav
    from xytok.io_codes import CodesError, CodesReader

    if args.stream_frames is not None and not args.streaming:
        raise CLIError("--stream_frames only applies with --streaming")
    if not os.path.exists(args.input):
        raise CLIError(f"input not found: {args.input}")
    try:
        reader = CodesReader(args.input)
    except CodesError as e:
        raise CLIError(str(e))
    if len(reader) == 0:
        raise CLIError(f"{args.input}: no utterances found")
    use = args.num_quantizers
    if model_family(args) == "xy":
        codec, config, device = load_model(args)
        num_quantizers, codebook_size = quantizer_shape(config)
        if use is not None and use > num_quantizers:
            raise CLIError(f"--num_quantizers {use}: the model has {num_quantizers} RVQ layers (use 1..{num_quantizers})")
        n_used = num_quantizers if use is None else use
        logger.info("decoding from %d of %d RVQ layers: %g bps (%d x log2(%d) bits x %g Hz)", n_used,
                    num_quantizers, codec.bitrate(n_used), n_used, codebook_size, codec.frame_rate)
        sample_rate, hop = codec.sample_rate, codec.decoder_upsample_rate  # output rate, samples per code

        def check(codes):
            return check_codes(codes, num_quantizers, codebook_size, use)

        if args.streaming:
            streamer = _Streamer(codec, args.overlap_seconds, use, args.stream_frames)
            decode_items = streamer.decode_items
        else:
            def decode_items(items):
                return _decode_group(codec, items, device, args.overlap_seconds, use)
    else:
        if args.streaming:
            raise CLIError("--streaming needs an xy model with a causal decoder (conf/train_stage2_streaming.yaml)")
        codec, device = load_family_codec(args)
        if use is not None and use > codec.max_quantizers:
            raise CLIError(f"--num_quantizers {use}: {codec.name} has {codec.max_quantizers} codebooks")
        sample_rate, hop = codec.sample_rate, codec.hop_length

        def check(codes):
            if use is not None and codes.ndim == 2 and codes.shape[0] < use:
                return f"codes have nq={codes.shape[0]}, --num_quantizers {use} needs at least {use} rows"
            return codec.check_codes(codes)

        def decode_items(items):  # the first `use` rows (a residual VQ's coarse-to-fine prefix)
            return codec.decode([c[:use] if use else c for c in items])
    os.makedirs(args.output_dir, exist_ok=True)
    logger.info("decoding %d utterance(s) from %s into %s (%d Hz wavs)", len(reader), args.input,
                args.output_dir, sample_rate)

    failures: List[Tuple[str, str]] = []
    written = {}
    total_samples = 0
    start = time.time()
    keys = reader.keys()
    with tqdm(total=len(keys), unit="utt", desc="decode", disable=args.no_progress, file=sys.stderr) as bar:
        for i in range(0, len(keys), args.batch_size):
            batch = []
            for utt in keys[i:i + args.batch_size]:
                try:
                    codes = reader[utt]
                except CodesError as e:
                    failures.append((utt, str(e)))
                    continue
                reason = check(codes)
                if reason:
                    failures.append((utt, f"{args.input}: {reason}"))
                    continue
                if "/" in utt:
                    failures.append((utt, "utterance id contains '/', cannot be a file name"))
                    continue
                batch.append((utt, codes))
            expected = {u: c.shape[1] * hop for u, c in batch}
            for utt, wav in run_isolating_failures(decode_items, batch, "decoding", failures, logger):
                wav = wav.detach().float().cpu().reshape(-1).numpy()
                if wav.shape[0] != expected[utt]:
                    failures.append((utt, f"codec returned {wav.shape[0]} samples, expected {expected[utt]}"))
                    continue
                path = os.path.join(args.output_dir, utt + ".wav")
                try:
                    write_wav(path, wav, sample_rate, subtype=args.subtype)
                except Exception as e:
                    failures.append((utt, f"{path}: cannot write: {e}"))
                    continue
                written[utt] = path
                total_samples += wav.shape[0]
            bar.update(len(keys[i:i + args.batch_size]))
    write_table(os.path.join(args.output_dir, "wav.scp"), written)  # LC_ALL=C sorted, atomic
    if args.streaming:
        streamer.report(os.path.join(args.output_dir, "streaming.json"), sample_rate)
    log_throughput("wavs + wav.scp", len(written), len(keys), total_samples, args.output_dir, start,
                   sample_rate)
    return report_failures(failures, "utterance(s)")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_main(_run, args)


if __name__ == "__main__":
    sys.exit(main())
