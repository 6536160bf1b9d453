"""Streaming decoder on the CPU: algorithmic latency, time to first audio, per-push compute and RTF,
against the offline decode of the same model (xytok.streaming; docs/streaming.md).

    python benchmarks/streaming.py                                     # paper size, random weights
    python benchmarks/streaming.py --model egs/mini/exp/stage2_streaming_debug/export
    python benchmarks/streaming.py --chunk_frames 2 --lookahead_frames 1 --seconds 20 --threads 2

Without --model: the released-size architecture (../shared/golden/full/config.yaml) with the
streaming overrides of conf/train_stage2_streaming.yaml (--chunk_frames/--lookahead_frames) and
random weights (compute does not depend on the weights). Codes are random; the stream gets
--frames_per_push code frames per call (default: the chunk), pushed without waiting, so:

* first audio (compute): wall time from the first push to the first samples out; in real time,
  where code t arrives when its 80 ms of audio ended, add the wait for the first C + K codes
  (rounded up to whole pushes);
* per push: compute per call (mean / p95 / max) against the audio one push carries
  (real time needs the p95 below it);
* RTF: total stream compute / audio seconds; the offline decode of the same codes for comparison,
  and the max |stream - offline| (must be <= 1e-4).
Prints one table; no files are written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
DEFAULT_CONFIG = os.path.join(HERE, "..", "..", "shared", "golden", "full", "config.yaml")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a streaming model dir (export/ with config.yaml + weights)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="without --model: architecture (random weights)")
    p.add_argument("--chunk_frames", type=int, default=1, help="without --model: C (code frames)")
    p.add_argument("--lookahead_frames", type=int, default=2, help="without --model: K (code frames)")
    p.add_argument("--seconds", type=float, default=10.0, help="utterance length")
    p.add_argument("--frames_per_push", type=int, default=None, help="code frames per push (default: C)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=2, help="timed runs (the best is reported); one warm-up first")
    p.add_argument("--seed", type=int, default=0)
    return p


def build(args):
    import yaml

    from xytok.codec import load_codec
    from xytok.train.config import deep_merge

    if args.model:
        return load_codec(args.model), args.model
    with open(args.config) as f:
        params = yaml.safe_load(f)["generator_params"]
    c, k = args.chunk_frames, args.lookahead_frames
    params = deep_merge(params, {
        "post_rvq_adapter_kwargs": {"causal": True, "chunk_frames": c, "lookahead_frames": k},
        "acoustic_decoder_kwargs": {"causal": True, "chunk_frames": 4 * c}, "vocos_kwargs": {"causal": True}})
    torch.manual_seed(args.seed)
    return load_codec({"generator_params": params}), f"{os.path.basename(os.path.dirname(os.path.abspath(args.config)))} config, random weights"


def stream_once(codec, codes, step):
    from xytok.streaming import StreamingDecoder

    decoder = StreamingDecoder(codec)
    pieces, pushes, first = [], [], None
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, codes.shape[1], step):
            t0 = time.perf_counter()
            out = decoder.push(codes[:, i:i + step])
            pushes.append(time.perf_counter() - t0)
            if out.numel() and first is None:
                first = time.perf_counter() - start
            pieces.append(out)
        pieces.append(decoder.finish())
    total = time.perf_counter() - start
    return torch.cat(pieces), total, first, pushes, decoder.latency


def main(argv=None):
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    codec, what = build(args)
    from xytok.streaming import streaming_spec

    spec = streaming_spec(codec)
    step = args.frames_per_push or spec.chunk_frames
    frames = max(1, round(args.seconds * codec.frame_rate))
    g = torch.Generator().manual_seed(args.seed)
    codes = torch.randint(0, codec.codebook_size, (codec.num_quantizers, frames), generator=g)
    audio_s = frames * spec.samples_per_code / spec.sample_rate
    n_params = sum(p.numel() for name in ("post_rvq_adapter", "upsample", "acoustic_decoder", "vocos")
                   for p in getattr(codec, name).parameters())

    with torch.inference_mode():
        codec.decode([codes[:, :min(frames, 25)]])  # warm-up
    best_offline = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = codec.decode([codes])[0]
        best_offline = min(best_offline, time.perf_counter() - t0)
    stream_once(codec, codes[:, :min(frames, 25)], step)  # warm-up
    runs = [stream_once(codec, codes, step) for _ in range(args.repeats)]
    out, total, first, pushes, lat = min(runs, key=lambda r: r[1])
    pushes = sorted(pushes)
    p95 = pushes[min(len(pushes) - 1, int(0.95 * len(pushes)))]
    per_push_audio_ms = 1000.0 * step * spec.samples_per_code / spec.sample_rate
    # real time: the first audio needs C + K codes, which come in pushes of `step`
    wait_frames = -(-(spec.chunk_frames + spec.lookahead_frames) // step) * step
    wait_ms = wait_frames * lat["code_frame_ms"]
    rows = [
        ("model", f"{what}; decoder side {n_params / 1e6:.2f} M parameters"),
        ("CPU threads", f"{args.threads} ({os.cpu_count()} cores visible)"),
        ("chunk C / look-ahead K", f"{spec.chunk_frames} / {spec.lookahead_frames} code frames "
                                   f"({lat['code_frame_ms']:.0f} ms each); pushed {step} per call"),
        ("algorithmic latency", f"{lat['algorithmic_latency_ms']:.0f} ms ((C + K) x {lat['code_frame_ms']:.0f} ms"
                                f" + {lat['istft_tail_ms']:.0f} ms ISTFT tail)"),
        ("first audio, compute", f"{1000 * first:.1f} ms (in real time: + {wait_ms:.0f} ms waiting for "
                                 f"{wait_frames} codes = {wait_ms + 1000 * first:.0f} ms)"),
        ("compute per push", f"mean {1000 * sum(pushes) / len(pushes):.1f} / p95 {1000 * p95:.1f} / "
                             f"max {1000 * pushes[-1]:.1f} ms for {per_push_audio_ms:.0f} ms of audio"),
        ("RTF stream", f"{total / audio_s:.3f} ({total:.2f} s for {audio_s:.1f} s)"),
        ("RTF offline decode", f"{best_offline / audio_s:.3f} ({best_offline:.2f} s)"),
        ("max |stream - offline|", f"{(out - ref).abs().max().item():.2e} (samples {out.numel()} vs {ref.numel()})"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
