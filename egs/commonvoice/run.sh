#!/usr/bin/env bash
# Common Voice recipe, one language per run. Point COMMONVOICE (db.sh or the environment) to the
# extracted release (the folder holding <lang>/), or give the release tarball:
#   ./run.sh --local_data_opts "--lang de"                                   # train_de dev_de test_de
#   ./run.sh --local_data_opts "--lang de --archive /data/cv-corpus-17.0-2024-03-15-de.tar.gz"
# The set names follow the language of --local_data_opts (default en; zh-CN -> train_zh_CN ...).
# Adapting the released XY-Tokenizer to a language: README.md, "Adapting to a new language".
# Options: ./run.sh --help
set -euo pipefail

# The language is local/data.sh's --lang; read it here too so that the sets are named after it.
lang=en
_args=("$@")
for ((_i = 0; _i < ${#_args[@]}; _i++)); do
    case ${_args[_i]} in
        --local_data_opts) _opts=${_args[_i + 1]:-} ;;
        --local_data_opts=*) _opts=${_args[_i]#*=} ;;
        *) continue ;;
    esac
    if [[ " $_opts " =~ [[:space:]]--lang[=[:space:]]+[\'\"]?([A-Za-z0-9-]+) ]]; then lang=${BASH_REMATCH[1]}; fi
done
suffix=${lang//-/_}

train_set=train_$suffix
valid_set=dev_$suffix
test_sets=test_$suffix

# Stages 9-10 score in the run's language (--asr_language: Whisper transcribes in it, the normaliser
# and WER/CER follow it; zh-CN -> zh); Whisper is multilingual, pocketsphinx English-only.
./xytok.sh \
    --train_set "$train_set" --valid_set "$valid_set" --test_sets "$test_sets" \
    --stage1_config conf/train_stage1.yaml --stage2_config conf/train_stage2.yaml \
    --nbpe 5000 --max_wav_duration 30 --nj 16 --inference_nj 8 --asr_backend whisper --asr_language "$lang" \
    "$@"
