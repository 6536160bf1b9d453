#!/usr/bin/env bash
# Usage: utils/split_data.sh [--per-utt | --per-spk] <data> <N>
# Writes <data>/split<N>/<1..N>/, each a consistent data dir holding a contiguous part of the sorted
# utterances (wav.scp, text, utt2spk, spk2utt, utt2num_samples, feats.scp, segments, ... filtered
# together). Default: split by utterance (part sizes differ by at most one). --per-spk keeps each
# speaker in one part (Kaldi's default; needs at least N speakers). Unlike Kaldi, --per-utt still
# writes split<N>/ (not split<N>utt/), so callers need not know which mode was used.
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
args=()
for a in "$@"; do
    case "$a" in
        --per-utt | --per_utt) ;;  # the default
        *) args+=("$a") ;;
    esac
done
exec "${XYTOK_PYTHON:-python3}" -m xytok.bin.datadir split ${args[@]+"${args[@]}"}
