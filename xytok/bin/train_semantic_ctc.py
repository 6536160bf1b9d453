"""Pre-train the semantic encoder as a character-CTC recogniser: a small stand-in for Whisper.

  python -m xytok.bin.train_semantic_ctc --config conf/train_stage1_debug.yaml \\
      --train_data dump/raw/train --valid_data dump/raw/dev --out exp/stage1_x/semantic_ctc

The paper's semantic tower is a frozen, Whisper-initialised encoder: it already carries text when
stage 1 starts. Debug-size codecs (egs/mini) cannot load Whisper (its width is 768), so a recipe can
train the same `semantic_encoder_kwargs` architecture for a few minutes with CTC on characters on
its own training set, then start stage 1 from it (`--semantic_init OUT/semantic_encoder.pth`,
frozen like Whisper). Input = the stage-3 log-mel features (feats.scp), the model's own front end,
all held in memory: meant for debug-size sets (egs/mini: 1400 utterances, about 120 MB).

Writes OUT/semantic_encoder.pth (the encoder's state dict), OUT/result.json (valid CER/WER, settings),
OUT/hyp.txt, and OUT/.done; a finished OUT is not retrained.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

# As in xytok.bin.train: MKL may round the same matmul differently from run to run; strict CNR
# makes two runs of this script bit-identical. Must be set before torch loads.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

log = logging.getLogger("xytok.semantic_ctc")
DEFAULTS = {"epochs": 15, "batch_size": 16, "lr": 2e-3, "warmup": 0.05}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.train_semantic_ctc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="stage-1 YAML (generator_params.semantic_encoder_kwargs)")
    p.add_argument("--train_data", required=True, help="data dir with feats.scp (stage 3) and text")
    p.add_argument("--valid_data", required=True, help="data dir with feats.scp and text (CER reported)")
    p.add_argument("--out", required=True, help="output dir")
    # Defaults come from the config's `semantic_ctc_pretrain:` block, then from DEFAULTS.
    p.add_argument("--epochs", type=int, help=f"[default: {DEFAULTS['epochs']}]")
    p.add_argument("--batch_size", type=int, help=f"[default: {DEFAULTS['batch_size']}]")
    p.add_argument("--lr", type=float, help=f"peak AdamW lr, linear warm-up then cosine decay "
                                            f"[default: {DEFAULTS['lr']}]")
    p.add_argument("--warmup", type=float, help=f"warm-up, fraction of all steps [default: {DEFAULTS['warmup']}]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nthreads", type=int, default=1, help="torch threads")
    return p


def _load(data_dir: Path, norm) -> list:
    import kaldiio
    import numpy as np

    from xytok.eval.inputs import read_text

    for f in ("feats.scp", "text"):
        if not (data_dir / f).is_file():
            raise FileNotFoundError(f"{data_dir / f} not found (run recipe stages 1-3 first)")
    text = read_text(data_dir / "text")
    items = []
    for utt, mat in kaldiio.load_scp_sequential(str(data_dir / "feats.scp")):
        if utt not in text:
            raise ValueError(f"{data_dir}/text: no transcript for utterance {utt}")
        items.append((utt, np.array(mat, dtype=np.float32), norm(text[utt])))  # writable copy
    if not items:
        raise ValueError(f"{data_dir}/feats.scp: no utterances")
    return items


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "train.log")])
    if (out / ".done").is_file():
        log.info("%s: already trained", out)
        print(json.loads((out / "result.json").read_text())["cer_kaldi"])
        return 0
    import torch
    import yaml
    from torch import nn

    from xytok.eval.normalizer import BasicEnglishNormalizer
    from xytok.eval.probe import CharVocab, lr_factor
    from xytok.eval.wer import corpus_error_counts
    from xytok.nn.encoder import AudioEncoder

    torch.set_num_threads(args.nthreads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    cfg = yaml.safe_load(Path(args.config).read_text())
    block = cfg.get("semantic_ctc_pretrain") or {}
    unknown = set(block) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{args.config}: semantic_ctc_pretrain: unknown keys {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, type(v)(block.get(k, v)))
    enc_kwargs = cfg.get("generator_params", cfg)["semantic_encoder_kwargs"]
    norm = BasicEnglishNormalizer()
    train, valid = _load(Path(args.train_data), norm), _load(Path(args.valid_data), norm)
    vocab = CharVocab(t for _, _, t in train)
    encoder = AudioEncoder(**enc_kwargs)
    head = nn.Linear(enc_kwargs["d_model"], len(vocab))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    order = sorted(range(len(train)), key=lambda i: len(train[i][1]))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    total = len(batches) * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor("cosine", args.warmup, 0.05, total))
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def forward(idx, items):
        mels = [torch.from_numpy(items[i][1]) for i in idx]
        lengths = torch.tensor([len(m) for m in mels])
        x = nn.utils.rnn.pad_sequence(mels, batch_first=True).transpose(1, 2)  # (B, 80, T)
        h, h_lengths = encoder(x, lengths)
        return head(h.transpose(1, 2)).log_softmax(-1), h_lengths

    log.info("semantic encoder %s: %d params; %d train / %d valid utts, %d characters, %d steps",
             {k: enc_kwargs[k] for k in ("d_model", "encoder_layers")}, sum(p.numel() for p in encoder.parameters()),
             len(train), len(valid), len(vocab) - 1, total)
    start, step = time.time(), 0
    for epoch in range(1, args.epochs + 1):
        encoder.train()
        random.shuffle(batches)
        loss_sum, n = 0.0, 0
        for idx in batches:
            logp, lengths = forward(idx, train)
            targets = [torch.tensor(vocab.encode(train[i][2])) for i in idx]
            loss = ctc(logp.transpose(0, 1), torch.cat(targets), lengths, torch.tensor([len(t) for t in targets]))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            step += 1
            loss_sum, n = loss_sum + loss.item() * len(idx), n + len(idx)
        el = time.time() - start
        log.info("epoch %d/%d: CTC loss %.4f, %.1f steps/s, elapsed %.0fs, ETA %.0fs", epoch, args.epochs,
                 loss_sum / n, step / el, el, el / step * (total - step))
        if not math.isfinite(loss_sum):
            raise RuntimeError(f"CTC loss is not finite at epoch {epoch}: lower --lr")

    encoder.eval()
    hyps = {}
    with torch.inference_mode():
        for i in range(0, len(valid), args.batch_size):
            idx = list(range(i, min(i + args.batch_size, len(valid))))
            logp, lengths = forward(idx, valid)
            best = logp.argmax(-1)
            for j, k in enumerate(idx):
                hyps[valid[k][0]] = vocab.greedy_decode(best[j, : lengths[j]].tolist())
    refs = {u: t for u, _, t in valid}
    cer = corpus_error_counts(refs, hyps, norm, unit="char")
    wer = corpus_error_counts(refs, hyps, norm)
    log.info("valid: %s", cer.kaldi_line("CER"))
    log.info("valid: %s", wer.kaldi_line("WER"))
    torch.save(encoder.state_dict(), out / "semantic_encoder.pth")
    (out / "hyp.txt").write_text("".join(f"{u} {h}\n" for u, h in sorted(hyps.items())))
    (out / "result.json").write_text(json.dumps({
        "cer": cer.rate, "wer": wer.rate, "cer_kaldi": cer.kaldi_line("CER"), "wer_kaldi": wer.kaldi_line("WER"),
        "train_data": args.train_data, "valid_data": args.valid_data, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "seed": args.seed, "semantic_encoder_kwargs": enc_kwargs,
        "train_seconds": time.time() - start}, indent=2))
    (out / ".done").touch()
    print(cer.kaldi_line("CER"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
