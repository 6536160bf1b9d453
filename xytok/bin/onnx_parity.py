"""Parity of an ONNX export (``xytok export-onnx``) against the PyTorch model.

    python -m xytok.bin.onnx_parity --onnx_dir exp/onnx --model_dir exp/x/export
    python -m xytok.bin.onnx_parity --onnx_dir exp/onnx --model_dir D --wavs a.wav b.flac

Runs onnxruntime (CPU) and PyTorch (CPU) on the same clips -- synthetic speech-like clips of
--seconds (default 1 3 10 30 60) and/or the audio files given with --wavs -- and reports per clip:
the fraction of identical codes (ONNX encoder vs PyTorch ``encode``), the waveform SNR of the ONNX
decoder against the PyTorch ``decode`` for the same (PyTorch) codes, and real-time factors. Clips
longer than one 30-s window are windowed by ``xytok.onnx_runtime.OnnxCodec`` as ``encode`` does.

Prints a table, writes JSON (--json, default ONNX_DIR/parity.json) and exits with status 1 when a
clip misses the goal (--min_identical, default 1.0: all codes identical; --min_snr_db, default 50).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional

from xytok.cli import CLIError, logger, run_main, setup_logging


def add_parity_args(parser, with_onnx_dir: bool) -> None:
    g = parser.add_argument_group("parity")
    if with_onnx_dir:
        g.add_argument("--onnx_dir", required=True, help="directory written by 'xytok export-onnx'")
    g.add_argument("--seconds", type=float, nargs="+", default=[1, 3, 10, 30, 60],
                   help="lengths of the synthetic speech-like clips (default: %(default)s); 0 clips with --seconds")
    g.add_argument("--wavs", nargs="+", default=[], help="audio files to add to the clips (resampled to 16 kHz)")
    g.add_argument("--json", help="where to write the report (default: ONNX_DIR/parity.json)")
    g.add_argument("--min_identical", type=float, default=1.0, help="goal: fraction of identical codes per clip")
    g.add_argument("--min_snr_db", type=float, default=50.0, help="goal: decoder SNR vs PyTorch per clip (dB)")


def add_model_source_args(parser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="ID_OR_DIR",
                   help="Hugging Face hub id (e.g. fdugyt/XY_Tokenizer; HF_HUB_OFFLINE=1 reads only the cache) "
                   "or a directory holding config.yaml + model.safetensors/model.ckpt")
    g.add_argument("--revision", help="with a hub --model: branch, tag or commit")
    g.add_argument("--model_dir", help="directory with config.yaml and model.ckpt (or model.safetensors)")
    g.add_argument("--config", help="model config YAML (released format, generator_params)")
    g.add_argument("--checkpoint", help="model checkpoint (.ckpt)")
    g.add_argument("--num_threads", type=int, default=None,
                   help="CPU threads for both torch and onnxruntime (default: their choice)")
    g.add_argument("--overlap_seconds", type=float, default=10.0,
                   help="look-ahead overlap between 30-s windows for long inputs (default: %(default)s)")


def load_torch_codec(args):
    """The PyTorch codec from --model, --model_dir or --config/--checkpoint; errors name the files."""
    from xytok.cli import resolve_model_paths

    if args.model_dir and not os.path.isdir(args.model_dir):
        raise CLIError(f"--model_dir {args.model_dir}: no such directory")
    config, ckpt = resolve_model_paths(args)
    import torch

    from xytok.codec import load_codec

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        codec = load_codec(config, ckpt)
    except Exception as e:  # bad YAML, mismatched keys/shapes, unreadable checkpoint
        raise CLIError(f"cannot load the model from config {config} and checkpoint {ckpt}: {e}")
    logger.info("loaded model: config %s, checkpoint %s", config, ckpt)
    return codec


def gather_clips(seconds, wavs) -> list:
    from xytok.audio import load_audio
    from xytok.onnx_export import speech_like

    clips = []
    for i, s in enumerate(seconds):
        if s < 0.08:
            raise CLIError(f"--seconds {s}: clips must be >= 0.08 s (one code frame)")
        clips.append((f"speech_like_{s:g}s", speech_like(s, seed=i)))
    for path in wavs:
        try:
            wav, _ = load_audio(path)
        except ValueError as e:  # AudioError: names the file
            raise CLIError(f"--wavs: {e}")
        if wav.size < 1280:
            raise CLIError(f"--wavs {path}: {wav.size} samples is shorter than one code frame (1280)")
        clips.append((os.path.basename(path), wav))
    if not clips:
        raise CLIError("no clips: give --seconds and/or --wavs")
    return clips


def run_parity(codec, onnx_dir: str, args, clips=None) -> int:
    """Parity table + JSON for ``codec`` vs the export in ``onnx_dir``; returns the exit status.
    ``clips``: [(name, wav)] (default: gathered from --seconds / --wavs)."""
    from xytok.onnx_export import format_parity, parity
    from xytok.onnx_runtime import OnnxCodec

    if clips is None:
        clips = gather_clips(args.seconds, args.wavs)
    try:
        onnx_codec = OnnxCodec(onnx_dir, num_threads=args.num_threads, overlap_seconds=args.overlap_seconds)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    if onnx_codec.num_quantizers != codec.num_quantizers or onnx_codec.codebook_size != codec.codebook_size:
        raise CLIError(f"{onnx_dir}: export has {onnx_codec.num_quantizers} x {onnx_codec.codebook_size} codes, "
                       f"the model {codec.num_quantizers} x {codec.codebook_size}: not an export of this model")
    rows = parity(codec, onnx_codec, clips, overlap_seconds=args.overlap_seconds)
    print(format_parity(rows), flush=True)
    failed = [r["clip"] for r in rows
              if r["codes_identical"] < args.min_identical or not r["snr_db"] >= args.min_snr_db]
    report = {"onnx_dir": os.path.abspath(onnx_dir), "overlap_seconds": args.overlap_seconds,
              "goal": {"min_identical": args.min_identical, "min_snr_db": args.min_snr_db},
              "passed": not failed, "clips": rows}
    path = args.json or os.path.join(onnx_dir, "parity.json")
    with open(path, "w") as f:
        # an infinite SNR (bit-identical output) is written as "inf": JSON has no infinity
        json.dump(_finite(report), f, indent=2, allow_nan=False)
        f.write("\n")
    logger.info("parity report written to %s", path)
    if failed:
        logger.error("parity goal (codes identical >= %g, SNR >= %g dB) missed for: %s",
                     args.min_identical, args.min_snr_db, ", ".join(failed))
        return 1
    return 0


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xytok.bin.onnx_parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(parser)
    add_parity_args(parser, with_onnx_dir=True)
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _body(args) -> int:
    if not os.path.isdir(args.onnx_dir):
        raise CLIError(f"--onnx_dir {args.onnx_dir}: no such directory")
    codec = load_torch_codec(args)
    return run_parity(codec, args.onnx_dir, args)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_main(_body, args)


if __name__ == "__main__":
    sys.exit(main())
