#!/usr/bin/env bash
# AISHELL-1 data preparation (recipe stage 1).
#   local/data.sh [--sets "train dev test"] [--download true|false] [--remove_archive false]
# Uses $AISHELL/data_aishell if present, else downloads data_aishell.tgz from OpenSLR 33 (~15 GB,
# resumable, md5-checked) and extracts it; then extracts the per-speaker tarballs inside it
# (data_aishell/wav/<spk>.tar.gz, one .complete marker each, so a killed extraction resumes; a tree
# extracted before is used as is). Writes Kaldi data dirs data/{train,dev,test}, validated.
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*"; }

sets=               # AISHELL-1 sets; default: those named by the run's train/valid/test sets
download=true       # download data_aishell.tgz when data_aishell/ is missing (false: error)
remove_archive=false  # delete data_aishell.tgz and the speaker tarballs after extraction
help_message="Usage: local/data.sh [--sets \"train dev test\"] [--download true|false] [--remove_archive true|false]"
. utils/parse_options.sh
. ./db.sh
. ./path.sh

# Official md5 of data_aishell.tgz (OpenSLR 33). AISHELL_MD5 / AISHELL_MIRRORS (environment) replace
# it and the mirror list (a re-released archive, a local mirror, tests).
md5=${AISHELL_MD5:-2f494334227864a8a8fec932999db9d8}
mirrors=${AISHELL_MIRRORS:-"https://www.openslr.org/resources/33 https://us.openslr.org/resources/33 https://openslr.elda.org/resources/33 https://openslr.magicdatatech.com/resources/33"}

if [ -z "$sets" ]; then
    sets="${XYTOK_TRAIN_SET:-train} ${XYTOK_VALID_SET:-dev} ${XYTOK_TEST_SETS:-test}"
fi
sets=$(echo $sets | tr ' ' '\n' | awk '!seen[$0]++' | tr '\n' ' ')
for s in $sets; do
    [[ " train dev test " == *" $s "* ]] || { echo "local/data.sh: unknown AISHELL-1 set '$s' (known: train dev test)" >&2; exit 1; }
done

if [ ! -d "$AISHELL" ]; then
    "$download" || { echo "local/data.sh: AISHELL=$AISHELL does not exist (set AISHELL in db.sh or the environment)" >&2; exit 1; }
    mkdir -p "$AISHELL"
fi
corpus=$AISHELL/data_aishell
marker=$AISHELL/.data_aishell.tgz.complete
# Present if we extracted it (marker), or if it is there and no download of ours is half done.
if [ -f "$marker" ] || { [ -d "$corpus" ] && [ ! -e "$AISHELL/data_aishell.tgz" ] && [ ! -e "$AISHELL/data_aishell.tgz.part" ]; }; then
    log "using $corpus"
else
    "$download" || { echo "local/data.sh: $corpus not found and --download false" >&2; exit 1; }
    log "downloading data_aishell.tgz from OpenSLR 33 (resumable, md5 checked) into $AISHELL"
    urls=(); for m in $mirrors; do urls+=(--url "$m/data_aishell.tgz"); done
    rm_opt=(); "$remove_archive" && rm_opt=(--remove_archive)
    python3 -m xytok.data.download "${urls[@]}" --md5 "$md5" --dest "$AISHELL/data_aishell.tgz" \
        --extract_to "$AISHELL" --marker "$marker" "${rm_opt[@]}" \
        || { echo "local/data.sh: could not get AISHELL-1 (no network? download data_aishell.tgz to $AISHELL or point AISHELL to an existing tree)" >&2; exit 1; }
    [ -d "$corpus/wav" ] || { echo "local/data.sh: $AISHELL/data_aishell.tgz did not contain data_aishell/wav" >&2; rm -f "$marker"; exit 1; }
fi
rm_opt=(); "$remove_archive" && rm_opt=(--remove_archives)
python3 -m xytok.bin.aishell_data extract --wav_dir "$corpus/wav" "${rm_opt[@]}"

# Scanned on every run (a header read per wav, ~0.1 ms): a file added to or removed from the corpus
# reaches data/, and the later stages, whose fingerprints hash data/, redo what changed.
# shellcheck disable=SC2086
python3 -m xytok.bin.aishell_data prepare --corpus_dir "$corpus" --sets $sets --out_dir data
for s in $sets; do
    utils/validate_data_dir.sh --no-feats "data/$s"
done
log "done: $(for s in $sets; do printf 'data/%s ' "$s"; done)"
