#!/usr/bin/env bash
# Common Voice data preparation (recipe stage 1), one language.
#   local/data.sh [--lang de] [--archive cv-corpus-<version>-de.tar.gz] [--train_tsv train|validated]
#                 [--check_audio true]
# Reads $COMMONVOICE (db.sh): the release's <lang>/clips/*.mp3 and <lang>/{train,dev,test}.tsv
# (columns by header name). With --archive, the release tarball is first extracted into
# $COMMONVOICE (once). Writes data/<train>, data/<dev>, data/<test> (wav.scp, text, utt2spk,
# spk2utt), validated; the run's sets (XYTOK_*_SET, from run.sh: train_<lang> dev_<lang>
# test_<lang>). The work is done by python -m xytok.bin.commonvoice_data (see its --help).
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*"; }

lang=en              # Common Voice language code: en, de, fr, zh-CN, sv-SE, ...
archive=             # a release tarball (cv-corpus-<version>-<lang>.tar.gz) to extract into $COMMONVOICE
train_tsv=train      # train: the release's train split; validated: all validated clips but dev/test clips and speakers
check_audio=false    # open every clip (slow on a full release); unreadable ones are dropped and counted
nj=4                 # processes for --check_audio
help_message="Usage: local/data.sh [--lang de] [--archive PATH] [--train_tsv train|validated] [--check_audio true]"
. utils/parse_options.sh
. ./db.sh
. ./path.sh

suffix=${lang//-/_}
train_set=${XYTOK_TRAIN_SET:-train_$suffix}
dev_set=${XYTOK_VALID_SET:-dev_$suffix}
test_set=${XYTOK_TEST_SETS:-test_$suffix}
[ "$(echo $test_set | wc -w)" -eq 1 ] || { echo "local/data.sh: Common Voice makes one test set per language; got --test_sets '$test_set'" >&2; exit 1; }
hint="download it from https://commonvoice.mozilla.org/datasets (account needed) and set COMMONVOICE (db.sh or the environment) to the extracted cv-corpus-<version>/ folder, or pass --local_data_opts \"--lang $lang --archive PATH\""

cv_dir=$COMMONVOICE
if [ -n "$archive" ]; then
    [ -f "$archive" ] || { echo "local/data.sh: --archive $archive: no such file; $hint" >&2; exit 1; }
    cv_dir=$(python3 -m xytok.bin.commonvoice_data extract --archive "$archive" --dest "$COMMONVOICE" --lang "$lang")
elif [ ! -d "$COMMONVOICE" ]; then
    echo "local/data.sh: Common Voice '$lang' not found: COMMONVOICE=$COMMONVOICE does not exist; $hint" >&2
    exit 1
fi

args=(--cv_dir "$cv_dir" --lang "$lang" --out_dir data --train_set "$train_set" --dev_set "$dev_set"
      --test_set "$test_set" --train_tsv "$train_tsv" --nj "$nj")
"$check_audio" && args+=(--check_audio)
# Skip a finished preparation when the options and the release files (tsv names, sizes, times and
# the clips folder's) are unchanged.
sig=$(printf '%s\n' "${args[@]}"; find -L "$cv_dir" -maxdepth 3 \( -name '*.tsv' -o -name clips \) \
      -path "*/$lang/*" -printf '%p %s %T@\n' 2>/dev/null | LC_ALL=C sort)
marker=data/.commonvoice_${suffix}.done
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$sig" ] \
        && [ -d "data/$train_set" ] && [ -d "data/$dev_set" ] && [ -d "data/$test_set" ]; then
    log "data/$train_set data/$dev_set data/$test_set already prepared from this release with these options ($marker)"
    exit 0
fi
rm -f "$marker"
python3 -m xytok.bin.commonvoice_data prepare "${args[@]}"
for s in "$train_set" "$dev_set" "$test_set"; do
    utils/validate_data_dir.sh --no-feats "data/$s"
done
mkdir -p data && printf '%s\n' "$sig" > "$marker"
log "done: data/$train_set data/$dev_set data/$test_set"
