#!/usr/bin/env bash
# Recipe skeleton for a corpus in a simple layout (see README.md here): copy it to egs/<corpus>,
# point CORPUS (db.sh) to the corpus, adapt local/data.sh if its layout differs, then ./run.sh.
# Options and the values this recipe runs with: ./run.sh --help
set -euo pipefail

train_set=train      # = the set names in the metadata's 4th field (or <set>.txt files)
valid_set=dev
test_sets=test

./xytok.sh \
    --train_set "$train_set" --valid_set "$valid_set" --test_sets "$test_sets" \
    --stage1_config conf/train_stage1.yaml --stage2_config conf/train_stage2.yaml \
    --nbpe 500 --min_wav_duration 0.5 --max_wav_duration 30 --nj 8 --inference_nj 4 \
    "$@"
