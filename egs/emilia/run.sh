#!/usr/bin/env bash
# Emilia recipe (the corpus the released XY-Tokenizer was trained on). Point EMILIA (db.sh or the
# environment) to the corpus, in its Hugging Face or original layout; stage 1 prepares train/dev/test
# from every language present (dev and test are speakers held out from training). Stage 2 writes
# tar shards (--audio_format shards) and copies Emilia's MP3s into them as they are, not re-encoded;
# no stage-3 feature ark (~32 kB per second of audio): training computes the log-mel on its device.
# Options: ./run.sh --help; data options: --local_data_opts "--langs 'en zh' --min_dnsmos 3.2"
set -euo pipefail

train_set=train
valid_set=dev
test_sets=test

./xytok.sh \
    --train_set "$train_set" --valid_set "$valid_set" --test_sets "$test_sets" \
    --stage1_config conf/train_stage1.yaml --stage2_config conf/train_stage2.yaml \
    --nbpe 5000 --max_wav_duration 30 --nj 16 --inference_nj 8 \
    --audio_format shards --compute_feats false \
    "$@"
