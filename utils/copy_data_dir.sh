#!/usr/bin/env bash
# Usage: utils/copy_data_dir.sh [--utt-prefix P] [--utt-suffix S] [--spk-prefix P] [--spk-suffix S] <src> <dst>
# Copies a data dir, optionally renaming utterance and speaker ids (recording ids stay).
# Thin wrapper over xytok/bin/datadir.py (stdlib only; --check-audio needs soundfile).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${XYTOK_PYTHON:-python3}" -m xytok.bin.datadir copy "$@"
