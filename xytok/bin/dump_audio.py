"""Recipe stage 2: dump every utterance of a wav.scp as 16 kHz mono audio, as files or tar shards.

    python -m xytok.bin.dump_audio --wav_scp data/dev/wav.scp --out_dir dump/raw/org/dev/data \
        --out_scp dump/raw/org/dev/logs/wav.1.scp --out_utt2num_samples dump/raw/org/dev/logs/utt2num_samples.1 \
        [--audio_format files|shards --shard_prefix 1 --shard_size_mb 256 --utt2num_samples data/dev/utt2num_samples]

`files` (small corpora): one 16-bit PCM wav per utterance. `shards` (large corpora): tar shards of a
few hundred MB (xytok.data.shards) holding 16 kHz FLAC, or the source's compressed bytes as they are
(MP3/FLAC/Ogg files or tar members) when --utt2num_samples gives their 16 kHz length, so nothing is
re-encoded; the loader resamples those on the fly. Both formats resume: a re-run skips what a killed
run finished (whole files; finished shards).

Input entries may be any wav.scp value (path, `cmd |` pipe, ark offset) at any rate / channel count:
other rates are resampled (logged), multi-channel audio is averaged. Unreadable or empty audio is an
error naming the utterance: every bad utterance of the list is reported (one `BAD AUDIO` line each)
and the run goes on with the others, then exits 1, so one run names them all and keeps the rest for
the re-run. Each wav is written atomically; the output scp/utt2num_samples are written only when
every utterance succeeded, so a failed list never looks finished.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import soundfile as sf

from xytok.audio import AudioError, load_audio, parse_tar_member, read_tar_member_bytes, read_wav_scp, write_wav
from xytok.data.datadir import write_table
from xytok.progress import ProgressLog

# Source formats whose bytes a shard keeps as they are (libsndfile decodes them from memory).
KEEP_AS_IS = {".flac": "flac", ".mp3": "mp3", ".ogg": "ogg", ".opus": "opus"}

log = logging.getLogger("xytok.dump_audio")


def _report_bad(utt: str, value: str, err: Exception) -> None:
    msg = str(err)
    if utt not in msg:  # xytok.audio's messages already name the utterance and its entry
        msg = f"utterance {utt!r} ({value.strip()}): {msg}"
    log.error("BAD AUDIO %s", msg)


def _fail_bad(bad: Sequence[str], n_total: int, n_kept: int, where: str) -> int:
    shown = ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
    log.error("%d of %d utterance(s) have unusable audio (each listed above as BAD AUDIO: %s); %d dumped "
              "are kept for the re-run: drop the bad ones from the data dir (local/data.sh) or repair the "
              "files, then run again; %s not written", len(bad), n_total, shown, n_kept, where)
    return 1


def _source_bytes(value: str):
    """(bytes, extension) of a compressed source that can go into a shard unchanged, else None."""
    v = value.strip()
    member = parse_tar_member(v)
    if member and os.path.exists(member[0]):
        data = read_tar_member_bytes(*member)
        kind = _sniff(data)
        return (data, kind) if kind else None
    if v.endswith("|") or not os.path.isfile(v):
        return None
    if os.path.splitext(v)[1].lower() not in KEEP_AS_IS:
        return None
    with open(v, "rb") as f:
        data = f.read()
    kind = _sniff(data)  # the bytes must look like the format: anything else is decoded (and checked)
    return (data, kind) if kind else None


def _sniff(data: bytes):
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0):
        return "mp3"
    return None


def _flac_bytes(wav, fs: int) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), fs, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.dump_audio",
                                description="Dump wav.scp audio as fs-Hz mono audio files or tar shards "
                                            "(recipe stage 2).")
    p.add_argument("--wav_scp", required=True, help="input wav.scp (or one split of it)")
    p.add_argument("--out_dir", required=True, help="directory for <utt>.wav files or the shards")
    p.add_argument("--out_scp", required=True, help="output wav.scp pointing to the dumped audio")
    p.add_argument("--out_utt2num_samples", required=True, help="output utt2num_samples")
    p.add_argument("--fs", type=int, default=16000, help="output sample rate")
    p.add_argument("--subtype", default="PCM_16", help="soundfile subtype of the dumped wavs (files)")
    p.add_argument("--audio_format", choices=["files", "shards"], default="files",
                   help="one wav per utterance, or tar shards [default: %(default)s]")
    p.add_argument("--shard_prefix", default="shard", help="shard names: <out_dir>/<prefix>-NNNNNN.tar "
                                                           "(one prefix per job)")
    p.add_argument("--shard_size_mb", type=float, default=256.0, help="roll over to a new shard at this size")
    p.add_argument("--utt2num_samples", help="16 kHz lengths of the source (metadata): with shards, "
                                             "compressed sources listed here are kept as they are")
    p.add_argument("--keep_compressed", choices=["true", "false"], default="true",
                   help="shards: keep MP3/FLAC/Ogg sources' bytes instead of re-encoding [default: %(default)s]")
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
    if a.audio_format == "shards":
        return _dump_shards(a, entries)
    os.makedirs(a.out_dir, exist_ok=True)
    out_dir = os.path.abspath(a.out_dir)
    scp_table, num_samples = {}, {}
    n_clipped = n_done = 0
    resampled_from = {}  # source rate -> utterances (the set summary states the conversion)
    bad = []
    prog = ProgressLog(len(entries), os.path.basename(a.wav_scp), logger=log)
    for i, (utt, value) in enumerate(entries.items(), 1):
        out = os.path.join(out_dir, f"{utt}.wav")
        if os.path.exists(out):  # written atomically by an earlier (killed) run: complete
            scp_table[utt], num_samples[utt] = out, str(sf.info(out).frames)
            n_done += 1
            continue
        try:
            wav, info = load_audio(value, target_sr=a.fs, utt=utt)
        except AudioError as e:  # this utterance's audio: report it, go on with the others
            _report_bad(utt, value, e)
            bad.append(utt)
            continue
        try:
            n_clipped += write_wav(out, wav, a.fs, subtype=a.subtype) > 0
        except (OSError, RuntimeError) as e:  # writing (disk full, permissions): stop here
            log.error("utterance %s (%s): cannot write %s: %s", utt, value, out, e)
            return 1
        if info.resampled:
            resampled_from[info.orig_sample_rate] = resampled_from.get(info.orig_sample_rate, 0) + 1
        scp_table[utt] = out
        num_samples[utt] = str(info.num_samples)
        prog.update(i)
    if bad:
        return _fail_bad(bad, len(entries), len(scp_table), a.out_scp)
    write_table(a.out_utt2num_samples, num_samples)
    write_table(a.out_scp, scp_table)  # last: its existence means the split is complete
    log.info("dumped %d utterances (%d already there, %d resampled to %d Hz, %d with clipping) to %s",
             len(entries), n_done, sum(resampled_from.values()), a.fs, n_clipped, out_dir)
    for sr, n in sorted(resampled_from.items()):
        log.info("resampled %d -> %d Hz: %d utterance(s)", sr, a.fs, n)
    return 0


def _dump_shards(a, entries) -> int:
    from xytok.data.manifest import SortedLookup
    from xytok.data.shards import ShardWriter

    writer = ShardWriter(a.out_dir, a.shard_prefix, int(a.shard_size_mb * (1 << 20)))
    done = writer.done()
    lengths = SortedLookup(a.utt2num_samples) if a.utt2num_samples else None
    keep = a.keep_compressed == "true"
    n_kept = n_encoded = 0
    bad = []
    prog = ProgressLog(len(entries), os.path.basename(a.wav_scp), logger=log)
    if done:
        log.info("resuming: %d utterances are in %d finished shard(s)", len(done), writer.index)
    for i, (utt, value) in enumerate(entries.items(), 1):
        if utt in done:
            continue
        try:
            known = lengths.get(utt) if lengths is not None else None
            src = _source_bytes(value) if (keep and known is not None) else None
            if src is not None:
                data, ext = src
                n = int(known)
                n_kept += 1
            else:
                try:
                    wav, info = load_audio(value, target_sr=a.fs, utt=utt)
                except AudioError as e:  # this utterance's audio: report it, go on with the others
                    _report_bad(utt, value, e)
                    bad.append(utt)
                    continue
                data, ext, n = _flac_bytes(wav, a.fs), "flac", info.num_samples
                n_encoded += 1
            writer.add(utt, data, ext, n)
        except (AudioError, OSError, RuntimeError, ValueError) as e:
            writer.close()  # keep what is finished; a re-run continues after it
            log.error("utterance %s (%s): %s", utt, value, e)
            return 1
        prog.update(i)
    writer.close()
    if bad:
        return _fail_bad(bad, len(entries), len(entries) - len(bad), a.out_scp)
    from xytok.data.shards import read_list

    scp_table, num_samples = {}, {}
    for lst in writer.finished_lists():
        for utt, v, n in read_list(lst):
            if utt in entries:
                scp_table[utt], num_samples[utt] = v, str(n)
    missing = [u for u in entries if u not in scp_table]
    if missing:
        log.error("%d utterance(s) are in no finished shard (e.g. %s)", len(missing), missing[:3])
        return 1
    write_table(a.out_utt2num_samples, num_samples)
    write_table(a.out_scp, scp_table)
    log.info("%d utterances in %d shard(s) under %s: %d compressed sources kept as they are, %d encoded as "
             "%d Hz FLAC, %d from an earlier run", len(entries), writer.index, os.path.abspath(a.out_dir),
             n_kept, n_encoded, a.fs, len(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
