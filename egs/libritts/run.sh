#!/usr/bin/env bash
# LibriTTS recipe (OpenSLR 60: 24 kHz read speech, the LibriSpeech books re-cut at sentence breaks).
# Point LIBRITTS (db.sh or environment) to the dir holding LibriTTS/, or let stage 1 download the
# parts it needs. Stage 2 resamples the 24 kHz WAVs to the codec's 16 kHz (logged per set).
# Options: ./run.sh --help; data options: --local_data_opts "--text original --parts 'dev-clean'"
set -euo pipefail

train_set=train_clean_100
valid_set=dev_clean
test_sets="test_clean test_other"   # test-clean: the usual codec evaluation set on LibriTTS

./xytok.sh \
    --train_set "$train_set" --valid_set "$valid_set" --test_sets "$test_sets" \
    --stage1_config conf/train_stage1.yaml --stage2_config conf/train_stage2.yaml \
    --nbpe 5000 --max_wav_duration 30 --nj 16 --inference_nj 8 \
    "$@"
