"""Recipe stage 2: dump every utterance of a wav.scp as 16 kHz mono 16-bit PCM wav.

    python -m xytok.bin.dump_audio --wav_scp data/dev/wav.scp --out_dir dump/raw/org/dev/data \
        --out_scp dump/raw/org/dev/logs/wav.1.scp --out_utt2num_samples dump/raw/org/dev/logs/utt2num_samples.1

Input entries may be any wav.scp value (path, `cmd |` pipe, ark offset) at any rate / channel count:
other rates are resampled (logged), multi-channel audio is averaged. Unreadable or empty audio is an
error naming the utterance. Each wav is written atomically; the output scp/utt2num_samples are
written to temporary names and renamed only when every utterance succeeded, so a failed shard never
looks finished.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from xytok.audio import AudioError, load_audio, read_wav_scp, write_wav
from xytok.data.datadir import write_table
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.dump_audio")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.dump_audio",
                                description="Dump wav.scp audio as fs-Hz mono PCM wav files (recipe stage 2).")
    p.add_argument("--wav_scp", required=True, help="input wav.scp (or one shard of it)")
    p.add_argument("--out_dir", required=True, help="directory for <utt>.wav files")
    p.add_argument("--out_scp", required=True, help="output wav.scp pointing to the dumped files")
    p.add_argument("--out_utt2num_samples", required=True, help="output utt2num_samples")
    p.add_argument("--fs", type=int, default=16000, help="output sample rate")
    p.add_argument("--subtype", default="PCM_16", help="soundfile subtype of the dumped wavs")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [dump_audio] %(levelname)s %(message)s")

    try:
        entries = read_wav_scp(a.wav_scp)
    except AudioError as e:
        log.error("%s", e)
        return 1
    if not entries:
        log.error("%s: empty wav.scp", a.wav_scp)
        return 1
    os.makedirs(a.out_dir, exist_ok=True)
    out_dir = os.path.abspath(a.out_dir)
    scp_table, num_samples = {}, {}
    n_resampled = n_clipped = 0
    prog = ProgressLog(len(entries), os.path.basename(a.wav_scp), logger=log)
    for i, (utt, value) in enumerate(entries.items(), 1):
        try:
            wav, info = load_audio(value, target_sr=a.fs, utt=utt)
            out = os.path.join(out_dir, f"{utt}.wav")
            n_clipped += write_wav(out, wav, a.fs, subtype=a.subtype) > 0
        except (AudioError, OSError, RuntimeError) as e:
            log.error("utterance %s (%s): %s", utt, value, e)
            return 1
        n_resampled += info.resampled
        scp_table[utt] = out
        num_samples[utt] = str(info.num_samples)
        prog.update(i)
    write_table(a.out_utt2num_samples, num_samples)
    write_table(a.out_scp, scp_table)  # last: its existence means the shard is complete
    log.info("dumped %d utterances (%d resampled to %d Hz, %d with clipping) to %s", len(entries),
             n_resampled, a.fs, n_clipped, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
