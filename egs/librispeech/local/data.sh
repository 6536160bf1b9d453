#!/usr/bin/env bash
# LibriSpeech data preparation (recipe stage 1).
#   local/data.sh [--parts "dev-clean test-clean train-clean-100"] [--download true|false]
# Uses parts already present in $LIBRISPEECH/LibriSpeech/<part> and downloads missing ones from
# OpenSLR resource 12 (resumable, md5-checked, extracted with a .complete marker). Writes Kaldi data
# dirs data/<part with _> (wav.scp, text, utt2spk, spk2utt), validated. train_960 is made from the
# three training parts when asked for.
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*"; }

parts=              # LibriSpeech parts; default: those named by the run's train/valid/test sets
download=true       # download missing parts (false: error if a part is missing)
remove_archive=false  # delete each .tar.gz after extraction
help_message="Usage: local/data.sh [--parts \"dev-clean test-clean\"] [--download true|false]"
. utils/parse_options.sh
. ./db.sh
. ./path.sh

all_parts="dev-clean dev-other test-clean test-other train-clean-100 train-clean-360 train-other-500"
declare -A MD5=(  # official md5s (OpenSLR SLR12 md5sum.txt)
    [dev-clean]=42e2234ba48799c1f50f24a7926300a1    [dev-other]=c8d0bcc9cca99d4f8b62fcc847357931
    [test-clean]=32fa31d27d2e1cad72775fee3f4849a9   [test-other]=fb5a50374b501bb3bac4815ee91d3135
    [train-clean-100]=2a93770f6d5c6c964bc36631d331a522
    [train-clean-360]=c0e676e450a7ff2f54aeade5171606fa
    [train-other-500]=d1a0fd59409feb2c614ce4d30c387708 )
mirrors="https://www.openslr.org/resources/12 https://us.openslr.org/resources/12 https://openslr.elda.org/resources/12 https://openslr.magicdatatech.com/resources/12"

. utils/openslr_parts.sh
select_parts LibriSpeech "$all_parts"

if [ ! -d "$LIBRISPEECH" ]; then
    "$download" || { echo "local/data.sh: LIBRISPEECH=$LIBRISPEECH does not exist (set LIBRISPEECH in db.sh or the environment)" >&2; exit 1; }
    mkdir -p "$LIBRISPEECH"
fi

for part in $parts; do
    fetch_part "$LIBRISPEECH" LibriSpeech "$part" "$mirrors" --md5 "${MD5[$part]}"
    pdir=$LIBRISPEECH/LibriSpeech/$part
    dset=data/${part//-/_}
    # The part's signature: its transcript files (names, sizes, times) and audio file count, so an
    # edited or extended corpus is prepared again (and stage 2's fingerprints then redo the dump).
    sig=$(find -L "$pdir" -name '*.trans.txt' -printf '%P %s %T@\n' | LC_ALL=C sort
          echo "flac files: $(find -L "$pdir" -name '*.flac' | wc -l)")
    if [ -f "$dset/.done" ] && [ "$(cat "$dset/.done")" = "$sig" ]; then
        log "$part: $dset already prepared, corpus unchanged"
        continue
    fi
    [ -f "$dset/.done" ] && log "$part: the corpus changed since $dset was prepared: preparing it again"
    rm -f "$dset/.done"
    python3 -m xytok.bin.librispeech_data --corpus_dir "$LIBRISPEECH/LibriSpeech" --part "$part" --out "$dset"
    utils/validate_data_dir.sh --no-feats "$dset"
    echo "$sig" > "$dset/.done"
done

# train_960 is rebuilt whenever one of its parts was prepared again
"$want_960" && sig960=$(cat data/train_clean_100/.done data/train_clean_360/.done data/train_other_500/.done | cksum)
if "$want_960" && { [ ! -f data/train_960/.done ] || [ "$(cat data/train_960/.done)" != "$sig960" ]; }; then
    rm -rf data/train_960
    utils/combine_data.sh data/train_960 data/train_clean_100 data/train_clean_360 data/train_other_500
    utils/validate_data_dir.sh --no-feats data/train_960
    echo "$sig960" > data/train_960/.done
fi
log "done: $(for p in $parts; do printf 'data/%s ' "${p//-/_}"; done)"
