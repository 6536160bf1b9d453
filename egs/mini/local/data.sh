#!/usr/bin/env bash
# egs/mini data preparation (recipe stage 1): build a small multi-speaker English corpus in
# LibriSpeech layout (flite voices reading Harvard sentences and, for training only, our own
# sentences in local/extra_sentences.txt, + 5 real LibriVox utterances from pocketsphinx-testdata;
# see xytok/bin/make_mini_corpus.py for the split), then prepare Kaldi data dirs with the same code
# as egs/librispeech (python -m xytok.bin.librispeech_data).
#   data/train 1400 utts (6 voices), data/dev 30, data/test 35 (30 synthetic + 5 real)
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*"; }

nj=2                 # parallel synthesis processes
librivox=true        # add the 5 real LibriVox utterances to the test set
extra_voices=2       # voices reading each sentence of local/extra_sentences.txt (0 = leave them out)
help_message="Usage: local/data.sh [--nj 2] [--librivox true|false] [--extra_voices 0-6]"
. utils/parse_options.sh
. ./db.sh
. ./path.sh

opts=(); "$librivox" || opts+=(--no_librivox)
[ "$extra_voices" -gt 0 ] && opts+=(--extra_sentences local/extra_sentences.txt --extra_voices "$extra_voices")
python3 -m xytok.bin.make_mini_corpus --sentences local/harvard_sentences.txt \
    --out "$MINI_CORPUS/LibriSpeech" --nj "$nj" "${opts[@]}"

stamp=$(cat "$MINI_CORPUS/LibriSpeech/.complete")
for part in train dev test; do
    dset=data/$part
    if [ -f "$dset/.done" ] && [ "$(cat "$dset/.done")" = "$stamp" ]; then
        log "$dset already prepared"
        continue
    fi
    python3 -m xytok.bin.librispeech_data --corpus_dir "$MINI_CORPUS/LibriSpeech" --part "$part" --out "$dset"
    utils/validate_data_dir.sh --no-feats "$dset"
    echo "$stamp" > "$dset/.done"
done
log "done: data/train data/dev data/test"
