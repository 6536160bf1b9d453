#!/usr/bin/env bash
# Usage: utils/combine_data.sh <dst> <src1> <src2> ...
# Union of data dirs (utterance ids must be distinct); files present in every input are combined.
# Thin wrapper over xytok/bin/datadir.py (stdlib only; --check-audio needs soundfile).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${XYTOK_PYTHON:-python3}" -m xytok.bin.datadir combine "$@"
