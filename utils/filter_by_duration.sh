#!/usr/bin/env bash
# Usage: utils/filter_by_duration.sh [--min SECONDS] [--max SECONDS] [--fs 16000] <data_in> <data_out>
# Keeps utterances with min <= duration <= max; durations come from utt2num_samples (/ --fs),
# utt2dur, segments, or else the audio headers (soundfile). All files stay consistent.
# Thin wrapper over xytok/bin/datadir.py (stdlib only; --check-audio needs soundfile).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${XYTOK_PYTHON:-python3}" -m xytok.bin.datadir filter-duration "$@"
