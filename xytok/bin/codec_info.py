"""Bit rate of a codec's token stream, from the codes it wrote (recipe stage 7 -> RESULTS.md BPS).

  python -m xytok.bin.codec_info --model dac:DIR --codes exp/dac_x/decode/test/codes.scp \\
      --utt2num_samples dump/raw/test/utt2num_samples --fs 16000 --out exp/dac_x/decode/codec_info.json

BPS = Σ_q log2(codebook size of row q) × frame rate, over the rows the codes hold (so an encode
with --num_quantizers N is billed for N codebooks). The measured token rate (frames / audio
seconds, from --utt2num_samples) is recorded beside the nominal frame rate.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def get_parser():
    p = argparse.ArgumentParser(prog="python -m xytok.bin.codec_info", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="[FAMILY:]ID_OR_DIR",
                   help="the codec (xytok.codecs spec; an xy config.yaml with model.ckpt beside it works)")
    p.add_argument("--codes", required=True, action="append", help="codes .scp/.ark or npy dir (repeatable)")
    p.add_argument("--utt2num_samples", action="append", default=[],
                   help="Kaldi utt2num_samples of the encoded audio (repeatable, one per --codes)")
    p.add_argument("--fs", type=int, default=16000, help="sample rate of --utt2num_samples")
    p.add_argument("--out", required=True, help="output JSON")
    return p


def stream_info(codec, codes_by_utt: dict, num_samples: dict | None = None, fs: int = 16000) -> dict:
    """The codec's facts plus the bit rate of these codes (rows actually written)."""
    rows = {c.shape[0] for c in codes_by_utt.values()}
    if len(rows) != 1:
        raise ValueError(f"codes hold different numbers of rows per utterance: {sorted(rows)}")
    nq = rows.pop()
    sizes = codec.all_codebook_sizes()[:nq]
    info = {**codec.describe(), "num_quantizers": nq, "codebook_sizes": sizes, "bps": codec.bps_of(sizes),
            "n_utts": len(codes_by_utt), "frames": int(sum(c.shape[1] for c in codes_by_utt.values()))}
    if num_samples:
        seconds = sum(num_samples[u] for u in codes_by_utt if u in num_samples) / fs
        info["measured_frame_rate"] = info["frames"] / seconds if seconds > 0 else None
        info["measured_bps"] = (info["measured_frame_rate"] * info["bps"] / codec.frame_rate
                                if seconds > 0 else None)
    return info


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from xytok.codecs import CodecSpecError, load_codec_family
    from xytok.io_codes import CodesError, read_codes

    try:
        codec = load_codec_family(args.model)
        codes = {}
        for c in args.codes:
            codes.update(read_codes(c))
    except (CodecSpecError, CodesError, OSError) as e:
        print(f"codec_info: {e}", file=sys.stderr)
        return 1
    if not codes:
        print(f"codec_info: no codes in {', '.join(args.codes)}", file=sys.stderr)
        return 1
    from xytok.data.table import TableError, iter_table

    num_samples = {}
    try:
        for f in args.utt2num_samples:
            num_samples.update({u: int(n) for u, n, _ in iter_table(f, key_name="utterance id")})
    except (TableError, OSError, ValueError) as e:
        print(f"codec_info: {e}", file=sys.stderr)
        return 1
    try:
        info = stream_info(codec, codes, num_samples, args.fs)
    except ValueError as e:
        print(f"codec_info: {args.codes}: {e}", file=sys.stderr)
        return 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))
    print(f"{codec.family} {codec.name}: {info['num_quantizers']} codebook(s) x {info['frame_rate']:g} Hz "
          f"-> {info['bps']:g} bps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
