#!/usr/bin/env bash
# AISHELL-1 recipe (OpenSLR 33: 178 h of 16 kHz Mandarin read speech, 400 speakers). Point AISHELL
# (db.sh or environment) to the dir holding data_aishell/, or let stage 1 download and extract it.
# Scoring is Mandarin: --asr_backend whisper --asr_language zh (character error rate; pocketsphinx
# and hubert are English-only). Stage-4 tokenizer: one piece per
# character (--bpemode char; --nbpe is an upper bound there: sentencepiece keeps every character of
# the training text, ~4.2 k for AISHELL-1 train, plus <pad>, <unk> and the word-boundary piece).
# Options: ./run.sh --help
set -euo pipefail

train_set=train
valid_set=dev
test_sets=test

./xytok.sh \
    --train_set "$train_set" --valid_set "$valid_set" --test_sets "$test_sets" \
    --stage1_config conf/train_stage1.yaml --stage2_config conf/train_stage2.yaml \
    --bpemode char --nbpe 5000 --max_wav_duration 30 --nj 16 --inference_nj 8 \
    --asr_backend whisper --asr_language zh \
    "$@"
