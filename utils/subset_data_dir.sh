#!/usr/bin/env bash
# Usage: utils/subset_data_dir.sh --utt-list FILE <src> <dst>
# Copies the utterances listed (first field of each line of FILE) with consistent files.
# Thin wrapper over xytok/data/datadir.py (stdlib only; --check-audio needs soundfile).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${XYTOK_PYTHON:-python3}" -m xytok.data.datadir subset "$@"
