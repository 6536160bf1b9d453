#!/usr/bin/env bash
# Data preparation (recipe stage 1) for a corpus in a simple layout, under $CORPUS (db.sh):
#   $CORPUS/metadata.txt          path|speaker|text|set    one file, the set named in the 4th field
#   $CORPUS/<set>.txt             path|speaker|text        or one file per set (used when it exists)
# -> data/<set> (wav.scp text utt2spk spk2utt utt2num_samples) for every set the run needs:
# $XYTOK_TRAIN_SET, $XYTOK_VALID_SET, $XYTOK_TEST_SETS (exported by xytok.sh from --train_set ...).
# python -m xytok.bin.prepare_data does the work: ids <speaker>-<file name>, C-sorted, every bad line
# (missing audio, empty transcript, duplicate id) listed at once. Another layout: write the same
# data dirs your way (README.md, "Adding a corpus", lists the rules), or convert it to metadata.txt.
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*"; }

metadata=            # one metadata file for all sets (default: $CORPUS/metadata.txt)
text_norm=keep       # transcripts: keep (as written), upper, upper_nopunct (LibriSpeech-like)
sep="|"              # field separator of the metadata
help_message="Usage: local/data.sh [--metadata FILE] [--text_norm keep|upper|upper_nopunct] [--sep '|']"
. utils/parse_options.sh
. ./db.sh
. ./path.sh

sets="${XYTOK_TRAIN_SET:-train} ${XYTOK_VALID_SET:-dev} ${XYTOK_TEST_SETS:-test}"
for dset in $sets; do
    if [ -z "$metadata" ] && [ -f "$CORPUS/$dset.txt" ]; then
        opts=(--metadata "$CORPUS/$dset.txt")
    else
        m=${metadata:-$CORPUS/metadata.txt}
        [ -f "$m" ] || { echo "local/data.sh: neither $CORPUS/$dset.txt nor $m exists (set CORPUS in db.sh" \
            "or the environment to the corpus directory; see egs/TEMPLATE/README.md)" >&2; exit 1; }
        opts=(--metadata "$m" --set "$dset")
    fi
    python3 -m xytok.bin.prepare_data "${opts[@]}" --out "data/$dset" --text_norm "$text_norm" --sep "$sep"
done
log "done: $(for s in $sets; do printf 'data/%s ' "$s"; done)"
