"""Export the codec to ONNX: OUT_DIR/encoder.onnx, OUT_DIR/decoder.onnx, OUT_DIR/onnx_meta.json.

    xytok export-onnx --model_dir exp/x/export --out exp/x/onnx
    xytok export-onnx --model fdugyt/XY_Tokenizer --out onnx/
    xytok export-onnx --config C --checkpoint K --out OUT_DIR --parity

encoder.onnx: input  "wav"   float32 [1, N] at 16 kHz, 1280 <= N <= 480000 (one 30-s window)
              output "codes" int64   [nq, floor(N / 1280)]
decoder.onnx: input  "codes" int64   [nq, T], 1 <= T <= 375
              output "wav"   float32 [1, 1280 T]
Both have a dynamic length axis. Longer audio is windowed by the caller as ``xytok encode`` does
(30-s windows every 30 s - overlap, first 20 s of codes of each kept by default);
``xytok.onnx_runtime.OnnxCodec(OUT_DIR).encode(wav) / .decode(codes)`` does it for onnxruntime.
onnx_meta.json records sample rate, hop, nq, codebook size, window/overlap, opset and version.

--parity then runs the parity report of ``python -m xytok.bin.onnx_parity`` on the export
(onnxruntime vs PyTorch: identical codes and decoder SNR per clip length) and exits with status 1
if it misses the goal. Needs the ``onnx`` extra: pip install 'xytok[onnx]'.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from xytok.bin.onnx_parity import (add_model_source_args, add_parity_args, gather_clips, load_torch_codec,
                                   run_parity)
from xytok.cli import CLIError, logger, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xytok export-onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output directory (created)")
    add_model_source_args(parser)
    parser.add_argument("--parity", action="store_true",
                        help="after exporting, run the parity report (options below) on the export")
    add_parity_args(parser, with_onnx_dir=False)
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _body(args) -> int:
    if not 0 <= args.overlap_seconds < 30:
        raise CLIError("--overlap_seconds must be in [0, 30)")
    # read the parity clips first: a bad --wavs file fails before minutes of export
    clips = gather_clips(args.seconds, args.wavs) if args.parity else None
    codec = load_torch_codec(args)
    for mod in ("onnx", "onnxscript"):  # the dynamo exporter needs both; say so before tracing
        try:
            __import__(mod)
        except ImportError:
            raise CLIError(f"ONNX export needs the '{mod}' package: pip install 'xytok[onnx]'")
    from xytok.onnx_export import export_onnx

    t0 = time.time()
    try:
        meta = export_onnx(codec, args.out, overlap_seconds=args.overlap_seconds)
    except OSError as e:
        raise CLIError(f"cannot write to {args.out}: {e}")
    sizes = {f: os.path.getsize(os.path.join(args.out, f)) / 2**20
             for f in sorted(os.listdir(args.out)) if f.endswith((".onnx", ".data"))}
    logger.info("wrote %s to %s in %.1f s (nq %d, codebook %d, opset %d)",
                ", ".join(f"{f} ({mb:.1f} MB)" for f, mb in sizes.items()), args.out,
                time.time() - t0, meta["num_quantizers"], meta["codebook_size"], meta["opset"])
    if args.parity:
        return run_parity(codec, args.out, args, clips)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_main(_body, args)


if __name__ == "__main__":
    sys.exit(main())
