"""onnxruntime (CPU) vs PyTorch (CPU) speed of the exported codec, with the parity of each run.

For each model -- the golden tiny model (tiny_a, trained weights) and the released-size
architecture (random weights, codebooks set to random vectors so that codes are non-trivial, as in
benchmarks/codec_speed.py) -- exports encoder.onnx / decoder.onnx (``xytok.onnx_export``), then
times ``XYTokenizer.encode/decode`` (mode="fast") and ``OnnxCodec.encode/decode`` on the same
speech-like clips and prints real-time factors (processing time / audio duration; lower is
faster), the fraction of identical codes and the decoder SNR against PyTorch.

    python benchmarks/onnx_speed.py                       # tiny_a and the released size
    python benchmarks/onnx_speed.py --models tiny --durations 1 10 60
    python benchmarks/onnx_speed.py --models full --threads 2 --onnx_dir /tmp/xy_full_onnx

Use --threads 1 on a machine shared with other busy processes (see codec_speed.py). The
released-size export takes minutes and ~2 GB of disk (fp32 weights, ~1 GB per graph);
--onnx_dir keeps it for later runs (an existing export there is reused).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(_HERE, "..", "..", "shared", "golden")


def _build(which: str):
    from xytok.codec import build_codec, load_codec

    if which == "tiny":
        tiny = os.path.join(GOLDEN, "tiny_a")
        return load_codec(os.path.join(tiny, "config.yaml"), os.path.join(tiny, "model.ckpt"))
    codec = build_codec(os.path.join(GOLDEN, "full", "config.yaml")).eval()
    with torch.no_grad():
        for q in codec.quantizer.quantizers:
            q.codebook.normal_()
            q.inited.fill_(True)
    return codec


def _median_time(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_model(which: str, args) -> list:
    from xytok.onnx_export import ENCODER_FILE, export_onnx, snr_db, speech_like
    from xytok.onnx_runtime import OnnxCodec

    torch.manual_seed(args.seed)
    codec = _build(which)
    n_params = sum(p.numel() for p in codec.parameters()) / 1e6
    onnx_dir = args.onnx_dir if args.onnx_dir and which == args.models[-1] else None
    tmp = None
    if onnx_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"xytok_onnx_{which}_")
        onnx_dir = tmp.name
    if not os.path.isfile(os.path.join(onnx_dir, ENCODER_FILE)):
        t0 = time.perf_counter()
        export_onnx(codec, onnx_dir)
        print(f"[{which}] {n_params:.1f} M parameters; exported in {time.perf_counter() - t0:.1f} s", flush=True)
    else:
        print(f"[{which}] {n_params:.1f} M parameters; reusing the export in {onnx_dir}", flush=True)
    sizes = {f: os.path.getsize(os.path.join(onnx_dir, f)) / 2**20 for f in sorted(os.listdir(onnx_dir))
             if f.endswith((".onnx", ".data"))}
    print(f"[{which}] files: " + ", ".join(f"{f} {mb:.1f} MB" for f, mb in sizes.items()), flush=True)
    oc = OnnxCodec(onnx_dir, num_threads=args.threads)

    warm = speech_like(2.0, seed=99)  # first calls pay for allocation / kernel selection
    codec.decode(codec.encode([torch.from_numpy(warm)]))
    oc.decode(oc.encode(warm))

    rows = []
    print(f"[{which}] {'seconds':>8} {'enc RTF torch':>14} {'enc RTF ort':>12} {'dec RTF torch':>14} "
          f"{'dec RTF ort':>12} {'codes same':>11} {'SNR dB':>8}", flush=True)
    for i, dur in enumerate(args.durations):
        wav = speech_like(dur, seed=i)
        with torch.no_grad():
            te, ref = _median_time(lambda: codec.encode([torch.from_numpy(wav)])[0], args.reps)
            td, ref_wav = _median_time(lambda: codec.decode([ref])[0].numpy(), args.reps)
        oe, codes = _median_time(lambda: oc.encode(wav), args.reps)
        od, out_wav = _median_time(lambda: oc.decode(ref.numpy()), args.reps)
        same = float(np.mean(codes == ref.numpy()))
        snr = snr_db(ref_wav, out_wav)
        rows.append((which, dur, te / dur, oe / dur, td / dur, od / dur, same, snr))
        print(f"[{which}] {dur:8.1f} {te / dur:14.4f} {oe / dur:12.4f} {td / dur:14.4f} {od / dur:12.4f} "
              f"{same:11.4f} {snr:8.1f}", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "full"], choices=["tiny", "full"],
                        help="tiny = golden tiny_a; full = released-size architecture, random weights")
    parser.add_argument("--durations", type=float, nargs="+", default=[3, 10, 30, 60], help="clip lengths in s")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op and onnxruntime intra-op threads")
    parser.add_argument("--reps", type=int, default=1, help="repetitions per measurement (median reported)")
    parser.add_argument("--onnx_dir", help="keep / reuse the export of the last model of --models here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import onnxruntime

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, threads {args.threads}, "
          f"reps {args.reps}", flush=True)
    rows = []
    for which in args.models:
        rows += run_model(which, args)
    print("\nspeed-up of onnxruntime over PyTorch (RTF torch / RTF ort):")
    for which, dur, te, oe, td, od, same, snr in rows:
        print(f"  {which:5s} {dur:6.1f} s: encode x{te / oe:.2f}  decode x{td / od:.2f}  "
              f"(codes identical {same:.4f}, SNR {snr:.1f} dB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
