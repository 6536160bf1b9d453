#!/usr/bin/env bash
# LibriSpeech recipe. Point LIBRISPEECH (db.sh or environment) to the dir holding LibriSpeech/,
# or let stage 1 download the parts it needs. Options: ./run.sh --help
set -euo pipefail

train_set=train_clean_100
valid_set=dev_clean
test_sets="test_clean test_other"

./xytok.sh \
    --train_set "$train_set" --valid_set "$valid_set" --test_sets "$test_sets" \
    --stage1_config conf/train_stage1.yaml --stage2_config conf/train_stage2.yaml \
    --nbpe 5000 --max_wav_duration 30 --nj 16 --inference_nj 8 \
    "$@"
