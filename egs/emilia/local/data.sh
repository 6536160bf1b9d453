#!/usr/bin/env bash
# Emilia data preparation (recipe stage 1).
#   local/data.sh [--langs "en zh"] [--min_dnsmos 3.2] [--min_duration 1] [--max_duration 30]
#                 [--dev_spk 10] [--test_spk 10] [--download true --max_shards_per_lang 2]
# Reads $EMILIA (db.sh) in the Hugging Face layout (Emilia/<LANG>/<LANG>-B00xxxx.tar and
# Emilia-YODAS/<LANG>/...: the mp3s are used inside the tars, never extracted or re-encoded) or the
# original layout (<LANG>/<LANG>_B00000.jsonl + mp3 dirs), and writes data/<train>, data/<dev>,
# data/<test> (wav.scp, text, utt2spk, spk2utt, utt2dur, utt2num_samples, utt2lang), validated.
# Dev and test are whole speakers held out from training, per language. The work is done by
# python -m xytok.bin.emilia_data (see its --help).
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*"; }

langs=                 # languages, e.g. "en zh" (EN ZH DE FR JA KO); empty = every language present
min_dnsmos=            # drop utterances whose DNSMOS is lower (Emilia itself kept >= 3.0); empty = no filter
min_duration=0         # seconds (metadata duration); shorter utterances are dropped from all sets
max_duration=30        # seconds; longer utterances are dropped from all sets
dev_spk=10             # speakers per language held out for the dev set
test_spk=10            # speakers per language held out for the test set
seed=0                 # which speakers are held out
nj=4                   # shards scanned in parallel
download=false         # fetch missing shards of amphion/Emilia-Dataset (gated: huggingface-cli login first)
subsets=Emilia         # download: Emilia, Emilia-YODAS or "Emilia Emilia-YODAS"
max_shards_per_lang=   # download: at most this many shards per language and subset; empty = all
help_message="Usage: local/data.sh [--langs \"en zh\"] [--min_dnsmos 3.2] [--dev_spk 10] [--test_spk 10] [--download true]"
. utils/parse_options.sh
. ./db.sh
. ./path.sh

train_set=${XYTOK_TRAIN_SET:-train}
dev_set=${XYTOK_VALID_SET:-dev}
test_set=${XYTOK_TEST_SETS:-test}
[ "$(echo $test_set | wc -w)" -eq 1 ] || { echo "local/data.sh: Emilia makes one test set; got --test_sets '$test_set'" >&2; exit 1; }

if "$download"; then
    [ -n "$langs" ] || { echo "local/data.sh: --download true needs --langs (e.g. --langs 'en zh')" >&2; exit 1; }
    opt=(); [ -n "$max_shards_per_lang" ] && opt=(--max_shards_per_lang "$max_shards_per_lang")
    log "downloading missing $subsets shards for '$langs' into $EMILIA"
    python3 -m xytok.bin.emilia_data download --emilia_dir "$EMILIA" --langs "$langs" --subsets "$subsets" "${opt[@]}"
fi
[ -d "$EMILIA" ] || { echo "local/data.sh: EMILIA=$EMILIA does not exist (set EMILIA in db.sh or the environment, or use --download true)" >&2; exit 1; }

args=(--emilia_dir "$EMILIA" --out_dir data --langs "$langs" --min_duration "$min_duration"
      --max_duration "$max_duration" --dev_spk "$dev_spk" --test_spk "$test_spk" --seed "$seed"
      --train_set "$train_set" --dev_set "$dev_set" --test_set "$test_set" --nj "$nj")
[ -n "$min_dnsmos" ] && args+=(--min_dnsmos "$min_dnsmos")

# Scanning every shard of a full download takes a while: skip it when the options and the shard
# files (names, sizes, times) are those of the last successful preparation.
sig=$(printf '%s\n' "${args[@]}"; find -L "$EMILIA" -maxdepth 3 \( -name '*.tar' -o -name '*.jsonl' \) \
      -printf '%p %s %T@\n' | LC_ALL=C sort)
marker=data/.emilia_prep.done
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$sig" ] \
        && [ -d "data/$train_set" ] && [ -d "data/$dev_set" ] && [ -d "data/$test_set" ]; then
    log "data/$train_set data/$dev_set data/$test_set already prepared from these shards with these options ($marker)"
    exit 0
fi
rm -f "$marker"
python3 -m xytok.bin.emilia_data prepare "${args[@]}"
for s in "$train_set" "$dev_set" "$test_set"; do
    utils/validate_data_dir.sh --no-feats "data/$s"
done
mkdir -p data && printf '%s\n' "$sig" > "$marker"
log "done: data/$train_set data/$dev_set data/$test_set"
