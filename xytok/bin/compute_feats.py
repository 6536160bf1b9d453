"""Recipe stage 3: the model's 80-bin Whisper log-mel for every utterance, as Kaldi ark/scp.

    python -m xytok.bin.compute_feats --wav_scp dump/raw/dev/wav.scp \
        --out_ark dump/fbank/dev/data/feats.1.ark --out_scp dump/fbank/dev/data/feats.1.scp

Each matrix is (frames, 80) float32 with frames = ceil(samples / 160), computed by
`xytok.frontend.utterance_log_mel`, i.e. exactly the features the model's front end produces (no
padding to 30 s). The scp is written under a temporary name and renamed after the last utterance,
so an interrupted shard is never mistaken for a finished one. Read back with
`kaldiio.load_scp(feats.scp)`.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Optional, Sequence

import kaldiio
import numpy as np

from xytok.audio import AudioError, load_audio, read_wav_scp
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.compute_feats")

HOP = 160  # 10 ms at 16 kHz: the Whisper front end's hop


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.compute_feats",
                                description="Whisper log-mel features (frames, 80) into kaldiio ark/scp "
                                            "(recipe stage 3).")
    p.add_argument("--wav_scp", required=True, help="input wav.scp (or one shard of it)")
    p.add_argument("--out_ark", required=True, help="output ark file")
    p.add_argument("--out_scp", required=True, help="output scp (written last, atomically)")
    p.add_argument("--fs", type=int, default=16000, help="the model's sample rate (audio is resampled to it)")
    p.add_argument("--num_threads", type=int, default=1, help="torch threads (parallelise with --nj instead)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [compute_feats] %(levelname)s %(message)s")

    import torch

    torch.set_num_threads(a.num_threads)
    from xytok.frontend import utterance_log_mel

    try:
        entries = read_wav_scp(a.wav_scp)
    except AudioError as e:
        log.error("%s", e)
        return 1
    if not entries:
        log.error("%s: empty wav.scp", a.wav_scp)
        return 1
    for d in {os.path.dirname(os.path.abspath(x)) for x in (a.out_ark, a.out_scp)}:
        os.makedirs(d, exist_ok=True)
    # Absolute ark path in the scp, so it stays valid from any working directory.
    out_ark = os.path.abspath(a.out_ark)
    tmp_scp = f"{a.out_scp}.tmp{os.getpid()}"
    prog = ProgressLog(len(entries), os.path.basename(a.wav_scp), logger=log)
    frames_total = 0
    try:
        with kaldiio.WriteHelper(f"ark,scp:{out_ark},{tmp_scp}") as writer:
            for i, (utt, value) in enumerate(entries.items(), 1):
                try:
                    wav, _ = load_audio(value, target_sr=a.fs, utt=utt)
                    feats = utterance_log_mel(wav)
                except (AudioError, ValueError) as e:
                    log.error("utterance %s (%s): %s", utt, value, e)
                    return 1
                want = math.ceil(wav.shape[0] / HOP)
                if feats.shape != (want, 80) or feats.dtype != np.float32:
                    log.error("utterance %s: front end returned %s %s, expected (%d, 80) float32", utt,
                              feats.shape, feats.dtype, want)
                    return 1
                writer(utt, feats)
                frames_total += want
                prog.update(i)
        os.replace(tmp_scp, a.out_scp)
    finally:
        if os.path.exists(tmp_scp):
            os.remove(tmp_scp)
    log.info("wrote %d utterances, %d frames (%.1f s) to %s", len(entries), frames_total,
             frames_total * HOP / a.fs, a.out_ark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
