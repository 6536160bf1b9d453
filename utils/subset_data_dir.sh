#!/usr/bin/env bash
# Usage: utils/subset_data_dir.sh --utt-list FILE <src> <dst>
#        utils/subset_data_dir.sh [--first | --last] <src> <N> <dst>
# Copies the listed utterances (first field of each line of FILE), or N of them (evenly spaced over
# the sorted ids, or the first/last N), with all files consistent.
# Thin wrapper over xytok/bin/datadir.py (stdlib only; --check-audio needs soundfile).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${XYTOK_PYTHON:-python3}" -m xytok.bin.datadir subset "$@"
