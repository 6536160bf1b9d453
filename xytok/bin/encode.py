"""Encode audio into XY-Tokenizer codes.

    xytok encode --config C --checkpoint K IN OUT
    python -m xytok.bin.encode --model_dir exp/x/export IN OUT

IN:  an audio file (utt id = file stem), a directory of audio files (wav/flac/ogg/..., utt id =
     file stem, sorted), or a Kaldi wav.scp (``uttid path`` / ``uttid cmd |``).
OUT: ``codes.scp`` or ``codes.ark`` -> Kaldi ark+scp (float32 matrices (nq, T) of integer
     indices, see xytok.io_codes), or a directory -> ``<utt>.npy`` int64 (nq, T).

Audio is resampled to 16 kHz and downmixed to mono when needed (logged). Bad utterances
(unreadable, empty, NaN/Inf, shorter than one code = 1280 samples) are skipped, the others are
written, and all failures are listed at the end with exit status 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from typing import List, Tuple

from xytok.cli import (CLIError, add_model_args, load_model, log_throughput, logger,
                       report_failures, run_isolating_failures, run_main, setup_logging)

SAMPLE_RATE = 16000
SAMPLES_PER_CODE = 1280  # 16 kHz / 12.5 Hz


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xytok encode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="audio file, directory of audio files, or wav.scp")
    parser.add_argument("output", metavar="OUT", help="codes .scp/.ark path (Kaldi) or output directory (npy)")
    add_model_args(parser)
    return parser


def list_inputs(path: str) -> "OrderedDict[str, str]":
    """utt id -> wav.scp-style entry (path or pipe) for IN."""
    from xytok.audio import AudioError, is_audio_file, list_audio_dir, read_wav_scp

    try:
        if os.path.isdir(path):
            entries = list_audio_dir(path)
            if not entries:
                raise CLIError(f"{path}: no audio files found in directory")
            return entries
        if not os.path.exists(path):
            raise CLIError(f"input not found: {path}")
        if is_audio_file(path):
            return OrderedDict([(os.path.splitext(os.path.basename(path))[0], path)])
        entries = read_wav_scp(path)
        if not entries:
            raise CLIError(f"{path}: wav.scp is empty")
        return entries
    except AudioError as e:
        raise CLIError(str(e))


def _load_one(utt: str, entry: str):
    """Audio for one utterance, or raise AudioError with a reason."""
    from xytok.audio import AudioError, load_audio

    wav, info = load_audio(entry, target_sr=SAMPLE_RATE)  # errors name the file
    if wav.shape[0] < SAMPLES_PER_CODE:
        raise AudioError(f"{entry.strip()}: too short: {wav.shape[0]} samples at {SAMPLE_RATE} Hz, "
                         f"need at least {SAMPLES_PER_CODE} for one code")
    return wav


def _encode_group(codec, wavs, device, overlap_seconds) -> List:
    import torch

    tensors = [torch.from_numpy(w).to(device) for w in wavs]
    with torch.inference_mode():
        # one model call per group; the codec batches its 30-s chunks up to len(tensors)
        return codec.encode(tensors, overlap_seconds=overlap_seconds, batch_size=len(tensors))


def encode_batch(codec, batch, device, overlap_seconds, failures):
    """Encode (utt, input) pairs, isolating the utterance that makes a batch fail."""
    return run_isolating_failures(
        lambda items: _encode_group(codec, items, device, overlap_seconds), batch, "encoding", failures, logger)

def _run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from xytok.audio import AudioError
    from xytok.io_codes import CodesError, CodesWriter

    inputs = list_inputs(args.input)
    codec, _, device = load_model(args)
    logger.info("encoding %d utterance(s) from %s into %s", len(inputs), args.input, args.output)

    failures: List[Tuple[str, str]] = []
    total_samples = 0
    n_written = 0
    start = time.time()
    items = list(inputs.items())
    with CodesWriter(args.output) as writer, \
            tqdm(total=len(items), unit="utt", desc="encode", disable=args.no_progress, file=sys.stderr) as bar:
        for i in range(0, len(items), args.batch_size):
            batch = []
            for utt, entry in items[i:i + args.batch_size]:
                try:
                    batch.append((utt, _load_one(utt, entry)))
                except AudioError as e:
                    failures.append((utt, str(e)))
            lengths = {u: w.shape[0] for u, w in batch}
            for utt, codes in encode_batch(codec, batch, device, args.overlap_seconds, failures):
                codes = codes.detach().cpu().numpy() if hasattr(codes, "detach") else np.asarray(codes)
                expected_t = lengths[utt] // SAMPLES_PER_CODE
                if codes.ndim != 2 or codes.shape[1] != expected_t:
                    failures.append((utt, f"codec returned codes of shape {codes.shape}, expected (nq, {expected_t})"))
                    continue
                try:
                    writer.write(utt, codes)
                except CodesError as e:
                    failures.append((utt, str(e)))
                    continue
                n_written += 1
                total_samples += lengths[utt]
            bar.update(len(items[i:i + args.batch_size]))
    log_throughput("codes", n_written, len(items), total_samples, args.output, start, SAMPLE_RATE)
    return report_failures(failures, "utterance(s)")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_main(_run, args)


if __name__ == "__main__":
    sys.exit(main())
