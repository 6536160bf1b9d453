"""Recipe stage 4: a sentencepiece text tokenizer trained on the training transcripts.

    python -m xytok.bin.train_spm --text data/train/text --vocab_size 100 \
        --output_dir data/token_list/unigram100

Writes OUTPUT_DIR/bpe.model, bpe.vocab and tokens.txt (one token per line, index = id), used by the
offline ASR head of stage-1 training. The Kaldi `text` file's first column (utterance id) is dropped.
Outputs are built in a temporary directory and moved into place only on success.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, Sequence

log = logging.getLogger("xytok.train_spm")


def read_kaldi_text(path: str) -> list:
    lines = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(maxsplit=1)
            if not parts:
                continue
            if len(parts) < 2 or not parts[1].strip():
                raise ValueError(f"{path}:{n}: utterance '{parts[0]}' has an empty transcript")
            lines.append(parts[1].strip())
    if not lines:
        raise ValueError(f"{path}: no transcripts")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.train_spm",
                                description="Train a sentencepiece model on a Kaldi text file (recipe stage 4).")
    p.add_argument("--text", required=True, help="Kaldi text file (uttid transcript)")
    p.add_argument("--output_dir", required=True, help="writes bpe.model, bpe.vocab, tokens.txt here")
    p.add_argument("--vocab_size", type=int, default=100, help="number of pieces (the recipe's --nbpe)")
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    p.add_argument("--character_coverage", type=float, default=1.0)
    p.add_argument("--input_sentence_size", type=int, default=10_000_000,
                   help="sample at most this many sentences (large corpora)")
    p.add_argument("--seed", type=int, default=0, help="sentencepiece random seed (reproducible sampling)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [train_spm] %(levelname)s %(message)s")

    import sentencepiece as spm

    try:
        sentences = read_kaldi_text(a.text)
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    parent = os.path.dirname(os.path.abspath(a.output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".spm.", dir=parent)
    t0 = time.time()
    try:
        corpus = os.path.join(tmp, "train.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(sentences) + "\n")
        spm.set_random_generator_seed(a.seed)
        try:
            spm.SentencePieceTrainer.train(
                input=corpus, model_prefix=os.path.join(tmp, "bpe"), vocab_size=a.vocab_size,
                model_type=a.model_type, character_coverage=a.character_coverage,
                input_sentence_size=a.input_sentence_size, shuffle_input_sentence=True,
                unk_id=1, bos_id=-1, eos_id=-1, pad_id=0, unk_surface="<unk>", minloglevel=2)
        except RuntimeError as e:  # e.g. "Vocabulary size is too high (N). Please set it to a value <= M."
            log.error("%s: sentencepiece training failed with vocab_size=%d on %d sentences: %s "
                      "(lower --nbpe / --vocab_size)", a.text, a.vocab_size, len(sentences), e)
            return 1
        os.remove(corpus)
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "bpe.model"))
        with open(os.path.join(tmp, "tokens.txt"), "w", encoding="utf-8") as f:
            for i in range(sp.get_piece_size()):
                f.write(sp.id_to_piece(i) + "\n")
        if os.path.exists(a.output_dir):
            shutil.rmtree(a.output_dir)
        os.replace(tmp, a.output_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    n_tokens = sum(len(sp.encode(s)) for s in sentences)
    log.info("trained %s model, %d pieces, on %d sentences (%.1f pieces/sentence) in %.1fs -> %s",
             a.model_type, sp.get_piece_size(), len(sentences), n_tokens / len(sentences),
             time.time() - t0, a.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
