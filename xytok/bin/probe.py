"""Text-alignment probe: BiLSTM-CTC on a frozen codec's z_q (paper protocol; recipe stage 10).

  python -m xytok.bin.probe --model exp/stage1_x --train_data dump/raw/train --valid_data dump/raw/dev \\
      --out exp/stage1_x/probe

  python -m xytok.bin.probe --codec mimi:kyutai/mimi --num_quantizers 8 --train_data ... --valid_data ... --out D

--codec FAMILY:ID_OR_DIR probes any codec of xytok.codecs (xy, dac, encodec, mimi) through its
``embed`` (continuous quantised embeddings of its codes, audio resampled to the codec's rate);
frames are repeated to ~50 Hz (x4 for 12.5 Hz codecs, none for >= 50 Hz ones).

Writes OUT/probe.json (WER, CER, counts, settings), OUT/wer.txt (Kaldi form), OUT/hyp.txt and caches
the features in OUT/feats/{train,valid}/ as float16 shards (reused when the model and data are
unchanged; a killed extraction resumes). At corpus scale (train-clean-100: ~28 GB of float16 z_q)
training streams the shards through --shuffle_buffer_frames (memory: buffer + one --shard_mb shard),
takes the normalisation statistics in one streaming pass, and runs the BiLSTM on --device
(cuda for the paper-size probe); --extract_batch_size utterances go through the codec per call
where it batches (xy: identical features to one at a time).

--language xx (e.g. zh): the character vocabulary comes from --train_data's text normalised for that
language (basic_multilingual unless --normalizer says otherwise), so Mandarin characters are in it;
for languages written without spaces (zh, yue, ja, th, lo, my, km, bo) CER is the primary metric
(first line of wer.txt, RESULTS.md column `CER`). Validation characters missing from the vocabulary
are counted in probe.json (valid_oov_chars).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="exp dir (with export/), export dir, or config.yaml (model.ckpt beside it)")
    p.add_argument("--config", default=None, help="codec config.yaml (alternative to --model)")
    p.add_argument("--checkpoint", default=None, help="codec model.ckpt (with --config)")
    p.add_argument("--codec", default=None, metavar="FAMILY:ID_OR_DIR",
                   help="probe a codec of xytok.codecs (xy, dac, encodec, mimi) instead of --model/--config")
    p.add_argument("--num_quantizers", type=int, default=None,
                   help="with --codec: embeddings of the first N codebooks (default: the codec's setting)")
    p.add_argument("--random_init", action="store_true", help="probe a randomly initialised codec (baseline)")
    p.add_argument("--codebook_init", choices=("kmeans", "zero"), default="kmeans",
                   help="with --random_init: k-means codebooks on --train_data frames, as training step 0 "
                        "(default), or the zero codebooks of a fresh model (every frame -> code 0: the probe "
                        "then sees a constant and learns only the text prior)")
    p.add_argument("--codebook_init_frames", type=int, default=5000,
                   help="with --random_init --codebook_init kmeans: 12.5 Hz frames used for k-means")
    p.add_argument("--train_data", required=True, help="Kaldi data dir with wav.scp and text (probe training)")
    p.add_argument("--valid_data", required=True, help="Kaldi data dir with wav.scp and text (WER is reported here)")
    p.add_argument("--out", "--output_dir", dest="out", required=True, help="output directory")
    p.add_argument("--feat_dir", default=None, help="feature cache (default OUT/feats)")
    p.add_argument("--hidden", type=int, default=256, help="LSTM width per direction")
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.0, help="linear LR warm-up, fraction of all steps")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="LR after warm-up: constant, or cosine decay to --lr_min_ratio x --lr")
    p.add_argument("--lr_min_ratio", type=float, default=0.05)
    p.add_argument("--grad_clip", type=float, default=5.0, help="gradient-norm clipping (0 = off)")
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--subsample", type=int, choices=(1, 2, 4), default=1,
                   help="keep every k-th 50 Hz frame before the LSTM (1 = paper's 50 Hz; 2 = 25 Hz, half the cost)")
    p.add_argument("--frame_dropout", type=float, default=0.0,
                   help="probability of zeroing a whole input frame during probe training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--language", default="en",
                   help="language of the transcripts (ISO code; zh-CN -> zh): normaliser and primary metric "
                        "(CER for languages written without spaces)")
    p.add_argument("--normalizer", default="auto",
                   choices=["auto", "basic_english", "basic_multilingual", "none"],
                   help="normaliser of the transcripts (auto: basic_english for en, basic_multilingual otherwise)")
    p.add_argument("--vocab_min_count", type=int, default=1,
                   help="training characters seen fewer times share one unknown symbol (1: every character kept)")
    p.add_argument("--device", default="cpu",
                   help="device for feature extraction and the probe BiLSTM (cpu, cuda, cuda:N; float32)")
    p.add_argument("--shuffle_buffer_frames", type=int, default=100_000,
                   help="training features held at once, in codec frames (0 = the whole set); with one "
                        "--shard_mb shard this bounds the probe's feature memory")
    p.add_argument("--shard_mb", type=float, default=64.0, help="size of the float16 feature shards on disk")
    p.add_argument("--extract_batch_size", type=int, default=8,
                   help="utterances per codec call during feature extraction (xy batches; other families one by one)")
    p.add_argument("--nthreads", type=int, default=1, help="torch threads (results are deterministic per setting)")
    return p


def spec_fingerprint(spec: str, codec) -> str:
    """Feature-cache key of a --codec model: the spec, its settings and its local files' sizes/mtimes."""
    import hashlib
    import os

    from xytok.codecs import parse_spec

    h = hashlib.sha1(json.dumps(codec.describe(), sort_keys=True).encode())
    ident = parse_spec(spec)[1]
    if os.path.isdir(ident):
        for f in sorted(Path(ident).rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    from xytok.eval.inputs import read_text
    from xytok.eval.probe import (FEATURE_OVERLAP_SECONDS, ProbeConfig, cache_features, cached_features,
                                  kmeans_init_codebooks, open_features, resolve_device, unfeaturised,
                                  model_fingerprint, resolve_model, train_and_evaluate, upsample_factor)

    torch.set_num_threads(args.nthreads)
    try:
        resolve_device(args.device)  # before any extraction: no CUDA -> say so now
    except ValueError as e:
        raise SystemExit(f"probe: {e}")
    if args.shuffle_buffer_frames < 0 or args.extract_batch_size < 1 or args.shard_mb <= 0:
        raise SystemExit("probe: --shuffle_buffer_frames must be >= 0, --extract_batch_size >= 1, --shard_mb > 0")
    family_codec = None
    if args.codec:
        if args.model or args.config or args.random_init:
            raise SystemExit("probe: --codec replaces --model/--config/--random_init")
        from xytok.codecs import load_codec_family

        family_codec = load_codec_family(args.codec, device=args.device, num_quantizers=args.num_quantizers)
        config, ckpt = None, None
        fp = spec_fingerprint(args.codec, family_codec)
    else:
        config, ckpt = resolve_model(args.model, args.config, args.checkpoint, args.random_init)
        fp = model_fingerprint(config, ckpt)
    out = Path(args.out)
    feat_dir = Path(args.feat_dir) if args.feat_dir else out / "feats"
    if args.random_init:  # the untrained weights depend on the seed, the codebooks on their init
        fp = f"{fp}-seed{args.seed}-{args.codebook_init}{args.codebook_init_frames}"
    scps = {}
    for name, d in (("train", args.train_data), ("valid", args.valid_data)):
        for f in ("wav.scp", "text"):
            if not (Path(d) / f).is_file():
                raise FileNotFoundError(f"{d}/{f} not found (the probe needs a Kaldi data dir with wav.scp and text)")
    codec = family_codec
    for name, d in (("train", args.train_data), ("valid", args.valid_data)):
        if codec is None and not cached_features(d, feat_dir, name, fp):
            from xytok.codec import load_codec

            logging.getLogger("xytok.probe").info("loading codec %s (%s)", config, ckpt or "random init")
            torch.manual_seed(args.seed)  # a reproducible random init
            codec = load_codec(config, ckpt, device=args.device)
            if args.random_init and args.codebook_init == "kmeans":
                n = kmeans_init_codebooks(codec, args.train_data, args.codebook_init_frames, args.device)
                logging.getLogger("xytok.probe").info("random init: codebooks k-means-initialised on %d "
                                                      "frames of %s", n, args.train_data)
        scps[name] = cache_features(codec, d, feat_dir, name, fp, args.device, batch_size=args.extract_batch_size,
                                    shard_mb=args.shard_mb)

    cfg = ProbeConfig(hidden=args.hidden, num_layers=args.num_layers, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, dropout=args.dropout, seed=args.seed,
                      warmup=args.warmup, schedule=args.schedule, lr_min_ratio=args.lr_min_ratio,
                      grad_clip=args.grad_clip, weight_decay=args.weight_decay, subsample=args.subsample,
                      frame_dropout=args.frame_dropout, language=args.language, normalizer=args.normalizer,
                      vocab_min_count=args.vocab_min_count, device=args.device,
                      shuffle_buffer_frames=args.shuffle_buffer_frames,
                      upsample=upsample_factor(family_codec.frame_rate) if family_codec else 4)
    res = train_and_evaluate(open_features(scps["train"]), open_features(scps["valid"]),
                             read_text(Path(args.train_data) / "text"), read_text(Path(args.valid_data) / "text"), cfg,
                             valid_unfeaturised=unfeaturised(scps["valid"]))
    res["n_train_unfeaturised"] = len(unfeaturised(scps["train"]))
    hyps = res.pop("hyps")
    res.update({"model_config": config, "model_checkpoint": ckpt, "random_init": args.random_init,
                "codebook_init": (args.codebook_init if args.random_init else "trained"),
                "codebook_init_frames": (args.codebook_init_frames
                                         if args.random_init and args.codebook_init == "kmeans" else None),
                "train_data": args.train_data, "valid_data": args.valid_data,
                "codec": family_codec.describe() if family_codec else None,
                "features": (f"{family_codec.family} embed(): continuous quantised embeddings of its "
                             f"{family_codec.num_quantizers} codebook(s), {family_codec.frame_rate:g} Hz, audio "
                             f"resampled to {family_codec.sample_rate} Hz, repeated x{cfg.upsample}"
                             if family_codec else "quantizer output z_q (continuous), 12.5 Hz, of the codes of the "
                             f"codec's encode windowing (30-s windows, {FEATURE_OVERLAP_SECONDS:g} s look-ahead), "
                             "repeated x4 to 50 Hz")
                            + (f", 1 frame in {args.subsample} kept ({50 // args.subsample} Hz LSTM input)"
                               if args.subsample > 1 else "")
                            + ", cached as float16, standardised per dimension with train-set statistics "
                              "(one streaming pass, float64)",
                "decoding": "greedy CTC, characters",
                "unfeaturised": "validation utterances without features count as errors (all words deleted); "
                                "training ones are left out"})
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(res, indent=2))
    note = (f", {res['n_valid_unfeaturised']} unfeaturised (counted as all deletions)"
            if res["n_valid_unfeaturised"] else "")
    # primary metric first (CER for languages written without spaces)
    order = ("cer", "wer") if res["metric"] == "cer" else ("wer", "cer")
    oov = (f"; {res['valid_oov_chars']} of {res['valid_ref_chars']} reference characters not in the training "
           f"vocabulary ({res['vocab_size']} characters, language {res['language']})")
    lines = [f"{res[m + '_counts']['kaldi']}  # probe, {res['n_valid']} utts{note}{oov}" for m in order]
    (out / "wer.txt").write_text("".join(ln + "\n" for ln in lines))
    (out / "hyp.txt").write_text("".join(f"{u} {h}\n" for u, h in sorted(hyps.items())))
    for ln in lines:
        print(ln)
    return 0


if __name__ == "__main__":
    sys.exit(main())
