#!/usr/bin/env bash
# LibriTTS data preparation (recipe stage 1).
#   local/data.sh [--parts "dev-clean test-clean train-clean-100"] [--text normalized|original] [--download true|false]
# Uses parts already present in $LIBRITTS/LibriTTS/<part> and downloads missing ones from OpenSLR
# resource 60 (resumable, checksum-verified, extracted with a .complete marker). Writes Kaldi data
# dirs data/<part with _> (wav.scp, text, utt2spk, spk2utt), validated; utterances whose wav or text
# file is missing or empty are skipped and counted (python -m xytok.bin.libritts_data). train_960 is
# made from the three training parts when asked for (--train_set train_960).
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*"; }

parts=              # LibriTTS parts; default: those named by the run's train/valid/test sets
text=normalized     # transcript: <utt>.normalized.txt (numbers etc. spelled out) or <utt>.original.txt
download=true       # download missing parts (false: error if a part is missing)
remove_archive=false  # delete each .tar.gz after extraction
help_message="Usage: local/data.sh [--parts \"dev-clean test-clean\"] [--text normalized|original] [--download true|false]"
. utils/parse_options.sh
. ./db.sh
. ./path.sh

all_parts="dev-clean dev-other test-clean test-other train-clean-100 train-clean-360 train-other-500"
# OpenSLR 60 publishes no md5 list. These are the archives' sha256 and sizes in bytes, as published
# (identically) by torchaudio's LIBRITTS dataset and TensorFlow Datasets' libritts checksums.tsv.
declare -A SHA256=(
    [dev-clean]=da0864e1bd26debed35da8a869dd5c04dfc27682921936de7cff9c8a254dbe1a
    [dev-other]=d413eda26f3a152ac7c9cf3658ef85504dfb1b625296e5fa83727f5186cca79c
    [test-clean]=234ea5b25859102a87024a4b9b86641f5b5aaaf1197335c95090cde04fe9a4f5
    [test-other]=33a5342094f3bba7ccc2e0500b9e72d558f72eb99328ac8debe1d9080402f10d
    [train-clean-100]=c5608bf1ef74bb621935382b8399c5cdd51cd3ee47cec51f00f885a64c6c7f6b
    [train-clean-360]=ce7cff44dcac46009d18379f37ef36551123a1dc4e5c8e4eb73ae57260de4886
    [train-other-500]=e35f7e34deeb2e2bdfe4403d88c8fdd5fbf64865cae41f027a185a6965f0a5df )
declare -A SIZE=( [dev-clean]=1291469655 [dev-other]=924804676 [test-clean]=1230670113
    [test-other]=964502297 [train-clean-100]=7723686890 [train-clean-360]=27504073644
    [train-other-500]=44565031479 )
# LIBRITTS_MIRRORS (environment): other base URLs holding <part>.tar.gz, tried in order.
mirrors=${LIBRITTS_MIRRORS:-"https://www.openslr.org/resources/60 https://us.openslr.org/resources/60 https://openslr.elda.org/resources/60 https://openslr.magicdatatech.com/resources/60"}
# LIBRITTS_CHECKSUMS=file (environment): "<part> <sha256> <size>" lines replacing the table above
# (a re-released archive, or tests serving their own).
if [ -n "${LIBRITTS_CHECKSUMS:-}" ]; then
    while read -r p h s; do
        if [ -n "$p" ]; then SHA256[$p]=$h; SIZE[$p]=$s; fi
    done < "$LIBRITTS_CHECKSUMS"
fi

case "$text" in normalized|original) ;; *) echo "local/data.sh: --text must be normalized or original (got '$text')" >&2; exit 1 ;; esac
. utils/openslr_parts.sh
select_parts LibriTTS "$all_parts"

if [ ! -d "$LIBRITTS" ]; then
    "$download" || { echo "local/data.sh: LIBRITTS=$LIBRITTS does not exist (set LIBRITTS in db.sh or the environment)" >&2; exit 1; }
    mkdir -p "$LIBRITTS"
fi

for part in $parts; do
    fetch_part "$LIBRITTS" LibriTTS "$part" "$mirrors" --sha256 "${SHA256[$part]}" --size "${SIZE[$part]}"
    # Scanned on every run (a header read per wav, ~0.1 ms): a file added to or removed from the
    # corpus reaches data/, and the later stages, whose fingerprints hash data/, redo what changed.
    dset=data/${part//-/_}
    python3 -m xytok.bin.libritts_data --corpus_dir "$LIBRITTS/LibriTTS" --part "$part" --text "$text" --out "$dset"
    utils/validate_data_dir.sh --no-feats "$dset"
done

if "$want_960"; then
    # the three training parts (555 h) as one set, as LibriSpeech's train_960
    utils/combine_data.sh data/train_960 data/train_clean_100 data/train_clean_360 data/train_other_500
    utils/validate_data_dir.sh --no-feats data/train_960
fi
log "done: $(for p in $parts; do printf 'data/%s ' "${p//-/_}"; done)"
