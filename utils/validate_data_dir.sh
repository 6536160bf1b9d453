#!/usr/bin/env bash
# Usage: utils/validate_data_dir.sh [--no-feats] [--no-text] [--check-audio] [--fs 16000] <data>
# Checks: LC_ALL=C-sorted unique ids, utt2spk/spk2utt consistent, every per-utterance file covers
# the same utterances, no empty transcripts, referenced files exist; with --check-audio every audio
# (and feature) entry is read: non-empty, sample rate == --fs, length == utt2num_samples (at the
# audio's own rate, or at 16 kHz within 1 ms for audio at another rate).
# Recipe stage 1 runs a faster audio check of its own (headers + a few frames of every file, all sets,
# every bad file listed): python -m xytok.bin.datadir check-audio <wav.scp>.
# Exits 1 listing every problem with the file and the utterance ids.
# Thin wrapper over xytok/bin/datadir.py (stdlib only; --check-audio needs soundfile).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${XYTOK_PYTHON:-python3}" -m xytok.bin.datadir validate "$@"
