"""Encode audio into XY-Tokenizer codes.

    xytok encode --config C --checkpoint K IN OUT
    python -m xytok.bin.encode --model_dir exp/x/export IN OUT

IN:  an audio file (utt id = file stem), a directory of audio files (wav/flac/ogg/..., utt id =
     file stem, sorted), or a Kaldi wav.scp (``uttid path`` / ``uttid cmd |``).
OUT: ``codes.scp`` or ``codes.ark`` -> Kaldi ark+scp (float32 matrices (nq, T) of integer
     indices, see xytok.io_codes), or a directory -> ``<utt>.npy`` int64 (nq, T).
     ``--format shards``: OUT is a token directory for LM training (xytok.tokens): uint16 codes
     (2 bytes per code) in tar shards with a JSON index per shard (utt, frames, duration, and the
     text / speaker of --text / --utt2spk); read it with ``xytok.tokens.read_shards(OUT)``.
     Resumable (a re-run skips the utterances of finished shards) and splittable: job K of N
     (``--job K --num_jobs N``, e.g. one per GPU) encodes every N-th utterance into OUT with
     its own shard prefix.

Other codecs: ``--model FAMILY:ID_OR_DIR`` (dac, encodec, mimi; see xytok.codecs) writes that
codec's codes (nq, T) at its frame rate, in the same formats; ``--num_quantizers N`` keeps the
first N codebooks (what the family allows: DAC/Mimi any prefix, EnCodec a configured bandwidth,
xy 1..8).

Audio is resampled to the codec's rate (16 kHz for xy) and downmixed to mono when needed (logged).
Bad utterances (unreadable, empty, NaN/Inf, shorter than one code = 1280 samples for xy) are
skipped, the others are written, and all failures are listed at the end with exit status 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from typing import List, Tuple

from xytok.cli import (CLIError, add_model_args, load_family_codec, load_model, log_throughput, logger,
                       model_family, report_failures, run_isolating_failures, run_main, setup_logging)

SAMPLE_RATE = 16000
SAMPLES_PER_CODE = 1280  # 16 kHz / 12.5 Hz


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xytok encode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="audio file, directory of audio files, or wav.scp")
    parser.add_argument("output", metavar="OUT", help="codes .scp/.ark path (Kaldi) or output directory (npy)")
    add_model_args(parser)
    g = parser.add_argument_group("output")
    g.add_argument("--format", choices=FORMATS, default=None,
                   help="ark (Kaldi ark+scp), npy (directory of <utt>.npy) or shards (token directory "
                        "for LM training) [default: ark for a .scp/.ark OUT, else npy]")
    g.add_argument("--text", help="shards: Kaldi text table (utt transcript) stored with the codes")
    g.add_argument("--utt2spk", help="shards: Kaldi utt2spk table stored with the codes")
    g.add_argument("--shard_size_mb", type=float, default=32.0,
                   help="shards: codes per shard in MB (also what a killed run can lose) [default: %(default)s]")
    g.add_argument("--num_quantizers", type=int, default=None, metavar="N",
                   help="keep the first N codebooks (default: the model's own setting, all for xy)")
    g.add_argument("--job", type=int, default=1, help="shards: this job's number K in 1..N [default: 1]")
    g.add_argument("--num_jobs", type=int, default=1,
                   help="shards: N jobs share IN; job K encodes utterances K, K+N, K+2N, ... [default: 1]")
    return parser


FORMATS = ("ark", "npy", "shards")


def output_format(args) -> str:
    """The output format from --format and OUT, refusing combinations that would surprise."""
    from xytok.io_codes import is_kaldi_path

    kaldi_out = is_kaldi_path(args.output)
    fmt = args.format or ("ark" if kaldi_out else "npy")
    if args.num_jobs < 1 or not 1 <= args.job <= args.num_jobs:
        raise CLIError(f"need 1 <= --job <= --num_jobs, got --job {args.job} --num_jobs {args.num_jobs}")
    if fmt == "ark" and not kaldi_out:
        raise CLIError(f"--format ark needs OUT ending in .scp or .ark, got {args.output}")
    if fmt in ("npy", "shards") and kaldi_out:
        raise CLIError(f"--format {fmt} writes a directory, but OUT {args.output} ends in .scp/.ark")
    if fmt != "shards":
        given = [o for o, v in (("--text", args.text), ("--utt2spk", args.utt2spk)) if v]
        if given or args.num_jobs != 1:
            raise CLIError(f"{', '.join(given) or '--num_jobs'} only applies to --format shards")
    if args.shard_size_mb <= 0:
        raise CLIError(f"--shard_size_mb must be > 0, got {args.shard_size_mb}")
    return fmt


def _read_meta_tables(args, utts) -> dict:
    """{"text": {utt: ...}, "speaker": {utt: ...}} from --text / --utt2spk, for the utterances in `utts`."""
    from xytok.data.table import TableError, iter_table

    tables = {}
    for key, path in (("text", args.text), ("speaker", args.utt2spk)):
        if not path:
            continue
        try:
            tables[key] = {u: v for u, v, _ in iter_table(path, key_name="utterance id") if u in utts}
        except TableError as e:
            raise CLIError(str(e))
        missing = [u for u in utts if u not in tables[key]]
        if missing:
            logger.warning("%s: no entry for %d of %d utterance(s) (e.g. %s): stored without %s",
                           path, len(missing), len(utts), ", ".join(missing[:3]), key)
    return tables


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


def _load_one(utt: str, entry: str, sample_rate: int = SAMPLE_RATE, hop: int = SAMPLES_PER_CODE):
    """Audio for one utterance at the codec's rate, or raise AudioError with a reason."""
    from xytok.audio import AudioError, load_audio

    wav, info = load_audio(entry, target_sr=sample_rate)  # errors name the file
    if wav.shape[0] < hop:
        raise AudioError(f"{entry.strip()}: too short: {wav.shape[0]} samples at {sample_rate} Hz, "
                         f"need at least {hop} for one code")
    return wav


def _encode_group(codec, wavs, device, overlap_seconds) -> List:
    import torch

    tensors = [torch.from_numpy(w).to(device) for w in wavs]
    with torch.inference_mode():
        # one model call per group; the codec batches its 30-s chunks up to len(tensors)
        return codec.encode(tensors, overlap_seconds=overlap_seconds, batch_size=len(tensors))


def _run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from xytok.audio import AudioError
    from xytok.io_codes import CodesError, CodesWriter

    fmt = output_format(args)
    inputs = list_inputs(args.input)
    items = list(inputs.items())
    if args.num_jobs > 1:  # every N-th utterance: jobs get similar mixes of lengths
        items = items[args.job - 1::args.num_jobs]
    if args.num_quantizers is not None and args.num_quantizers < 1:
        raise CLIError(f"--num_quantizers must be >= 1, got {args.num_quantizers}")
    if model_family(args) == "xy":
        codec, _, device = load_model(args)
        nq = args.num_quantizers or codec.num_quantizers
        if nq > codec.num_quantizers:
            raise CLIError(f"--num_quantizers {nq}: the model has {codec.num_quantizers} RVQ layers")
        sample_rate, hop, codebook_size = SAMPLE_RATE, SAMPLES_PER_CODE, codec.codebook_size
        frame_rate, model_info = sample_rate / hop, {}

        def encode_items(items):  # the first nq RVQ layers (a residual VQ's codes are a prefix)
            return [c[:nq] for c in _encode_group(codec, items, device, args.overlap_seconds)]

        def frames_ok(n_samples, t):
            return t == n_samples // hop
    else:
        codec, device = load_family_codec(args, args.num_quantizers)
        nq, sample_rate, hop = codec.num_quantizers, codec.sample_rate, codec.hop_length
        if len(set(codec.codebook_sizes)) != 1 and fmt == "shards":
            raise CLIError("--format shards needs one codebook size for every row")
        codebook_size = codec.codebook_sizes[0]
        frame_rate, model_info = codec.frame_rate, {"codec_family": codec.family, "model": codec.name}
        encode_items = codec.encode

        def frames_ok(n_samples, t):  # codecs pad the last frame (ceil) or drop it (floor)
            return abs(t - n_samples / hop) <= 1
    meta_tables = {}
    if fmt == "shards":
        from xytok.tokens import TokenShardError, TokenShardWriter, make_info

        meta_tables = _read_meta_tables(args, {u for u, _ in items})
        info = make_info(nq, codebook_size, frame_rate=frame_rate, sample_rate=sample_rate, **model_info)
        prefix = "codes" if args.num_jobs == 1 else f"codes.{args.job}of{args.num_jobs}"
        try:
            writer = TokenShardWriter(args.output, info, prefix=prefix,
                                      max_bytes=int(args.shard_size_mb * (1 << 20)))
        except TokenShardError as e:
            raise CLIError(str(e))
        n_before = len(items)
        items = [(u, e) for u, e in items if u not in writer.done]
        if n_before > len(items):
            logger.info("resuming: %d of %d utterance(s) are in finished shards of %s",
                        n_before - len(items), n_before, args.output)
        write_errors = (CodesError, TokenShardError)
    else:
        writer = CodesWriter(args.output)
        write_errors = (CodesError,)
    logger.info("encoding %d utterance(s) from %s into %s (%s)", len(items), args.input, args.output, fmt)

    failures: List[Tuple[str, str]] = []
    total_samples = 0
    n_written = 0
    start = time.time()
    with writer, \
            tqdm(total=len(items), unit="utt", desc="encode", disable=args.no_progress, file=sys.stderr) as bar:
        for i in range(0, len(items), args.batch_size):
            batch = []
            for utt, entry in items[i:i + args.batch_size]:
                try:
                    batch.append((utt, _load_one(utt, entry, sample_rate, hop)))
                except AudioError as e:
                    failures.append((utt, str(e)))
            lengths = {u: w.shape[0] for u, w in batch}
            for utt, codes in run_isolating_failures(encode_items, batch, "encoding", failures, logger):
                codes = codes.detach().cpu().numpy() if hasattr(codes, "detach") else np.asarray(codes)
                if codes.ndim != 2 or codes.shape[0] != nq or not frames_ok(lengths[utt], codes.shape[1]):
                    failures.append((utt, f"codec returned codes of shape {codes.shape}, expected "
                                          f"({nq}, {lengths[utt] / hop:.1f}) for {lengths[utt]} samples"))
                    continue
                try:
                    if fmt == "shards":
                        writer.write(utt, codes, duration=lengths[utt] / sample_rate,
                                     **{k: t.get(utt) for k, t in meta_tables.items()})
                    else:
                        writer.write(utt, codes)
                except write_errors as e:
                    failures.append((utt, str(e)))
                    continue
                n_written += 1
                total_samples += lengths[utt]
            bar.update(len(items[i:i + args.batch_size]))
    log_throughput("codes", n_written, len(items), total_samples, args.output, start, sample_rate)
    return report_failures(failures, "utterance(s)")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_main(_run, args)


if __name__ == "__main__":
    sys.exit(main())
