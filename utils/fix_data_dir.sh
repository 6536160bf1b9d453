#!/usr/bin/env bash
# Usage: utils/fix_data_dir.sh <data>
# Sorts every file, drops duplicate/malformed lines, keeps the utterances present in all
# per-utterance files (with a non-empty transcript), rebuilds spk2utt. Originals go to <data>/.backup/.
# Thin wrapper over xytok/bin/datadir.py (stdlib only; --check-audio needs soundfile).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${XYTOK_PYTHON:-python3}" -m xytok.bin.datadir fix "$@"
