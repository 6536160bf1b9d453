#!/usr/bin/env bash
# The one numbered-stage script shared by every xytok recipe (ESPnet/Kaldi style).
# A corpus's run.sh sets its sets/configs and forwards "$@" here; run it from the recipe dir
# (egs/<corpus>), which holds path.sh, cmd.sh, db.sh, conf/, local/data.sh and the utils symlink.
#
#   stage  what                                   entry point
#   1      data prep -> data/<set>                 local/data.sh $local_data_opts
#   2      16 kHz PCM dump + duration filter       python -m xytok.bin.dump_audio
#   3      Whisper log-mel feats (frames, 80)      python -m xytok.bin.compute_feats
#   4      sentencepiece text tokenizer            python -m xytok.bin.train_spm
#   5      stage-1 training (X-shaped)             python -m xytok.bin.train (debug configs with
#                                                  semantic_ctc_pretrain: xytok.bin.train_semantic_ctc first)
#   6      stage-2 training (Y-shaped, GAN)        python -m xytok.bin.train --init_param ...
#   7      tokenize test sets                      xytok encode
#   8      detokenize                              xytok decode
#   9      scoring + RESULTS.md                    xytok score, python -m xytok.bin.make_results
#   10     text-alignment probe                    python -m xytok.bin.probe
#   11     pack a hub-ready model folder           python -m xytok.bin.pack_model
#   12     upload it (only with --hub_repo)        python -m xytok.bin.upload_model
set -e
set -u
set -o pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
die() { log "ERROR: $*" >&2; exit 1; }
min() { local a=$1 b=$2; [ "$a" -lt "$b" ] && echo "$a" || echo "$b"; }
SECONDS=0
# Exact command line, for the run.sh written into every exp dir (re-runs with the same flags).
_run_args=$(printf '%q ' "$0" "$@")

# General
stage=1                # first stage to run
stop_stage=10000       # last stage to run
skip_data_prep=false   # skip stages 1-4
skip_train=false       # skip stages 5-6
skip_eval=false        # skip stages 7-10
ngpu=0                 # GPUs per node for training (0 = CPU)
num_nodes=1            # nodes for training (>1: torchrun rendezvous, one launcher per node)
node_rank=             # this node's rank 0..num_nodes-1 when you start each node yourself (local runner)
rdzv_endpoint=         # HOST[:PORT] where the nodes meet; HOST = node 0 (default: $MASTER_ADDR:$MASTER_PORT)
master_port=           # rendezvous port if rdzv_endpoint has none (default: $MASTER_PORT, else 29500)
nj=4                   # parallel jobs for CPU data stages (capped at the number of utterances)
inference_nj=4         # parallel jobs for tokenize/detokenize
gpu_inference=false    # stages 7-10 on one GPU per job (cuda_cmd --gpu 1) instead of decode_cmd (stage 10: the probe BiLSTM too)
dumpdir=dump           # dumped audio and features
expdir=exp             # experiments
python=python3         # python interpreter (path.sh puts tools/venv first on PATH)

# Data
local_data_opts=""     # options passed to local/data.sh
check_audio=true       # stage 1 reads every set's audio headers and lists all unusable files at once
                       # (unchanged sets are not checked again); false skips it (huge corpora)
fs=16000               # sample rate of the dumped audio (the model's rate)
min_wav_duration=0.1   # seconds; shorter train/valid utterances are dropped
max_wav_duration=30    # seconds; longer train/valid utterances are dropped (test sets are kept whole)
audio_format=files     # stage 2 output: files (one wav per utterance) or shards (tar shards, large corpora)
shard_size_mb=256      # size of one tar shard (--audio_format shards)
compute_feats=true     # stage 3 log-mel ark (read by training only with data.use_feats; needed by the
                       # debug semantic-CTC pre-training); false skips it: training computes the log-mel
nbpe=100               # sentencepiece vocabulary size (stage 4)
bpemode=unigram        # sentencepiece model type: unigram, bpe, char, word

# Training
stage1_config=         # stage-1 training YAML
stage1_args=           # extra arguments for stage-1 training (e.g. "--max_steps 100")
stage2_config=         # stage-2 training YAML
stage2_args=           # extra arguments for stage-2 training
tag=                   # exp dir suffix (default: the config file name without .yaml)
stage2_tag=            # stage-2 exp dir suffix (default: $tag, else the stage-2 config name)

# Inference and scoring
inference_model=       # [FAMILY:]ID_OR_DIR: an xy exp dir, export dir or config.yaml (model.ckpt beside it),
                       # xy:released (fdugyt/XY_Tokenizer), or another codec of xytok.codecs by hub id or
                       # save_pretrained dir: dac:DIR, encodec:DIR, mimi:kyutai/mimi (stages 7-10; outputs
                       # under exp/<family>_<name>); default: stage-2 export, else stage-1
inference_models=      # several models, e.g. "xy:released dac:DIR mimi:DIR#--num_quantizers=8": stages 7-10
                       # for each (one exp dir each; '#ARG' pieces are that model's extra encode/decode
                       # args) and one RESULTS.md with a row each
inference_exp_name=    # exp dir name for a FAMILY: model (default: <family>_<name>)
inference_tag=decode   # subdir of the model's exp dir for stages 7-9
inference_args=        # extra arguments for xytok encode/decode
decode_streaming=false # stage 8 decodes with a streaming decoder's stream (xytok decode --streaming; the model must
                       # be trained causal, e.g. conf/train_stage2_streaming.yaml): RESULTS.md then reports its
                       # measured time to first audio and RTF beside the algorithmic latency
decode_num_quantizers= # stages 8-9: decode + score from the first n RVQ layers, once per n listed ("8 4 2"); empty: all layers
                       # (each n: <set>/wav_nq<n>, <set>/score_nq<n>, one RESULTS.md row with its BPS;
                       # empty: <set>/wav, <set>/score)
scoring_metrics="pesq_wb,pesq_nb,stoi,estoi,sim,wer"  # metrics for xytok score (also dnsmos, utmos; offline utmos:
                       # --scoring_args "--utmos_model /path/utmos22_strong_step7459_v1.pt")
asr_backend=pocketsphinx  # ASR for WER: pocketsphinx (offline), whisper, hubert
asr_language=en           # language of the test/train speech (ISO code, e.g. zh): Whisper transcribes in it
                          # (pocketsphinx/hubert: en only); zh, ja, th, ... are scored by CER (stage 9 and
                          # the stage-10 probe, whose character vocabulary comes from the train text)
scoring_args=          # extra arguments for xytok score
align_max_lag_ms=auto  # stage 9: shift each reconstruction by its cross-correlation lag within ±this many ms
                       # before PESQ/STOI (recorded); auto = 0 (truncation only, the paper protocol) for xy
                       # models, 20 for other codec families (their decoders may delay the output)
probe_args=            # extra arguments for the text-alignment probe (stage 10)
probe_baseline=false   # stage 10 also probes a randomly initialised codec of the same config (control)
pack_args=             # extra arguments for pack_model (stage 11), e.g. "--license apache-2.0 --no_ckpt"
hub_repo=              # ORG/NAME: stage 12 uploads the stage-11 folder there (empty: stage 12 does nothing)
hub_private=false      # stage 12 creates a new hub repo as private

# Data sets
train_set=             # training set name (data/<train_set>)
valid_set=             # validation set name
test_sets=             # space-separated test set names

help_message=$(cat <<EOF
Usage: ./run.sh [options]   (a recipe's run.sh passes its settings to egs/TEMPLATE/xytok.sh, then yours)
Runs stages --stage..--stop_stage of the xytok recipe (see egs/TEMPLATE/xytok.sh for the table).
EOF
)

# --help / -h: list the options with the values this recipe runs with. Every run.sh passes its
# settings as options before "$@", so the other options are parsed first; xytok.sh's own defaults
# come from parse_options.sh's listing (in a subshell: it prints and exits there).
_want_help=false; _args=(); _value_next=false
for _a in "$@"; do
    if "$_value_next"; then _args+=("$_a"); _value_next=false; continue; fi
    case $_a in
        --help | -h) _want_help=true ;;
        --*=*) _args+=("$_a") ;;
        --) _args+=("$_a") ;;
        --*) _args+=("$_a"); _value_next=true ;;
        *) _args+=("$_a") ;;
    esac
done
if "$_want_help"; then
    _defaults=$(. ./utils/parse_options.sh --help)
    set -- ${_args[@]+"${_args[@]}"}
fi

. ./utils/parse_options.sh

if "$_want_help"; then
    echo "Recipe: $(basename "$(pwd)")  ($(pwd))"
    while IFS= read -r _line; do
        if [[ $_line =~ ^\ \ --([A-Za-z_0-9]+)\ +\(default:\ \"([^\"]*)\"\)(.*)$ ]]; then
            _name=${BASH_REMATCH[1]}; _def=${BASH_REMATCH[2]}; _rest=${BASH_REMATCH[3]}
            if [ "${!_name}" = "$_def" ]; then
                printf '  --%-24s "%s"%s\n' "$_name" "${!_name}" "$_rest"
            else
                printf '  --%-24s "%s"  (xytok.sh default: "%s")%s\n' "$_name" "${!_name}" "$_def" "$_rest"
            fi
        elif [[ $_line == "Options (current default in parentheses):" ]]; then
            echo "Options, with the values this recipe runs with (its run.sh's settings, then the options given here):"
        else
            echo "$_line"
        fi
    done <<< "$_defaults"
    exit 0
fi

[ $# -gt 0 ] && { echo "$help_message" >&2; die "unexpected positional arguments: $*"; }
. ./path.sh
. ./cmd.sh

[ -n "$train_set" ] || die "--train_set is required"
[ -n "$valid_set" ] || die "--valid_set is required"
[ -n "$test_sets" ] || die "--test_sets is required"
for v in nj inference_nj ngpu num_nodes fs nbpe; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--$v must be a non-negative integer, got '${!v}'"
done
[ "$nj" -ge 1 ] && [ "$inference_nj" -ge 1 ] || die "--nj and --inference_nj must be >= 1"
for v in $decode_num_quantizers; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "--decode_num_quantizers: expected positive integers (e.g. \"8 4 2\"), got '$v'"
done
for v in node_rank master_port; do
    [ -z "${!v}" ] || [[ ${!v} =~ ^[0-9]+$ ]] || die "--$v must be a non-negative integer, got '${!v}'"
done
if [ "$num_nodes" -gt 1 ]; then
    if [[ $cuda_cmd == *slurm.pl* ]]; then
        [ -z "$node_rank" ] || die "--node_rank is for nodes started by hand; under Slurm the nodes get their rank at the rendezvous"
    elif [ -z "$rdzv_endpoint" ] && [ -z "${MASTER_ADDR:-}" ]; then
        die "--num_nodes $num_nodes with a local runner: start this command on every node with" \
            "--node_rank 0..$((num_nodes - 1)) --rdzv_endpoint HOST:PORT (HOST = node 0), or export MASTER_ADDR"
    fi
fi

if "$skip_data_prep"; then skip_stages="1 2 3 4"; else skip_stages=""; fi
"$skip_train" && skip_stages+=" 5 6"
"$skip_eval" && skip_stages+=" 7 8 9 10"
# run_stage N: true when stage N is selected and not skipped.
run_stage() {
    [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ] && [[ " $skip_stages " != *" $1 "* ]]
}

data_feats=$dumpdir/raw
token_dir=data/token_list/${bpemode}${nbpe}
spm_model=$token_dir/bpe.model
stage1_tag=${tag:-$(basename "${stage1_config:-none}" .yaml)}
stage2_tag=${stage2_tag:-${tag:-$(basename "${stage2_config:-none}" .yaml)}}
stage1_exp=$expdir/stage1_${stage1_tag}
stage2_exp=$expdir/stage2_${stage2_tag}
# Sets for local/data.sh (a corpus may prepare only what the run needs).
export XYTOK_TRAIN_SET=$train_set XYTOK_VALID_SET=$valid_set XYTOK_TEST_SETS=$test_sets

# split_scp IN OUTDIR NAME N: split IN into OUTDIR/NAME.1.scp .. NAME.N.scp with Kaldi's split_scp.pl.
split_scp() {
    local in=$1 dir=$2 name=$3 n=$4 outs=() i
    for i in $(seq "$n"); do outs+=("$dir/$name.$i.scp"); done
    utils/split_scp.pl "$in" "${outs[@]}"
}

# Every stage's marker (.done, .feats.done, ...) records a fingerprint of the stage's inputs
# (xytok/bin/fingerprint.py: content hashes of the Kaldi tables and configs it reads, size+mtime of
# checkpoints, the options that shape its output; audio is never hashed), so a re-run redoes a stage
# whose inputs changed, and with it what depends on it.
# up_to_date MARKER [--file F] [--stat F] [--opt NAME=VALUE]...: true when MARKER records exactly
# these inputs; otherwise false with the reason in $stale_reason ($stale_legacy=true for an empty
# marker written by an xytok without fingerprints). python3, not ${python}: stdlib only.
up_to_date() {
    local rc=0
    stale_reason=$(python3 -m xytok.bin.fingerprint check "$@") || rc=$?
    stale_legacy=false
    case $rc in
        0) return 0 ;;
        1) return 1 ;;
        3) stale_legacy=true; return 1 ;;
        *) die "fingerprint check of $1 failed: $stale_reason" ;;
    esac
}
# mark_done MARKER [inputs as for up_to_date]: the stage finished on these inputs.
mark_done() { python3 -m xytok.bin.fingerprint write "$@" || die "could not write the marker $1"; }

# The inputs of stage 2 for one set, in _fp: its data dir (as dumped: org) or the dump (filtered).
fp_dump_org() {
    local src=data/$1 f
    _fp=(--opt fs="$fs" --opt audio_format="$audio_format")
    [ "$audio_format" = shards ] && _fp+=(--opt shard_size_mb="$shard_size_mb")
    for f in wav.scp text utt2spk spk2utt utt2num_samples segments; do _fp+=(--file "$src/$f"); done
}
fp_dump_filtered() {
    local org=$data_feats/org/$1 f
    _fp=()
    for f in wav.scp utt2num_samples text utt2spk; do _fp+=(--file "$org/$f"); done
    if [ "$1" = "$train_set" ] || [ "$1" = "$valid_set" ]; then
        _fp+=(--opt min_wav_duration="$min_wav_duration" --opt max_wav_duration="$max_wav_duration")
    fi
}

# dump_jobs DSET SRC_SCP META_DIR DIR FS NJ [dump_audio options]: SRC_SCP's audio dumped as FS Hz mono
# into DIR in NJ jobs (logs: DIR/logs/dump_audio.*.log). Every bad file of every job is listed at
# once (the finished audio is kept for the re-run) and the rate conversions are logged per set. DIR
# then holds wav.scp, utt2num_samples, META_DIR's text/utt2spk/spk2utt, feats_type and fs, validated.
dump_jobs() {
    local dset=$1 scp=$2 meta=$3 dir=$4 rate=$5 n=$6 i; shift 6
    split_scp "$scp" "$dir/logs" wav "$n"
    if ! ${train_cmd} --num_threads 1 JOB=1:"$n" "$dir/logs/dump_audio.JOB.log" \
        ${python} -m xytok.bin.dump_audio --wav_scp "$dir/logs/wav.JOB.scp" --out_dir "$dir/data" \
            --out_scp "$dir/logs/out_wav.JOB.scp" --out_utt2num_samples "$dir/logs/utt2num_samples.JOB" \
            --fs "$rate" "$@"; then
        grep -h "BAD AUDIO" "$dir"/logs/dump_audio.*.log >&2 || true
        die "$dset: dumping failed (logs: $dir/logs/dump_audio.*.log); unusable audio: drop those utterances in local/data.sh"
    fi
    # the rate conversions of all jobs, summed per source rate (dump_audio logs them per job)
    awk '/resampled [0-9]+ -> [0-9]+ Hz:/ { for (i = 1; i <= NF; i++) if ($i == "resampled") k = $(i+1) " -> " $(i+3) " Hz"; n[k] += $(NF-1) + 0 }
         END { for (k in n) printf "%s: %d utterance(s)\n", k, n[k] }' "$dir"/logs/dump_audio.*.log \
        | while read -r _line; do log "  $dset: resampled $_line"; done
    for i in $(seq "$n"); do cat "$dir/logs/out_wav.$i.scp"; done | LC_ALL=C sort > "$dir/wav.scp"
    for i in $(seq "$n"); do cat "$dir/logs/utt2num_samples.$i"; done | LC_ALL=C sort > "$dir/utt2num_samples"
    cp "$meta/text" "$meta/utt2spk" "$meta/spk2utt" "$dir/"
    echo raw > "$dir/feats_type"
    echo "$rate" > "$dir/fs"
    utils/validate_data_dir.sh --no-feats "$dir"
}

# subset_by_utts DIR_IN DIR_OUT UTTLIST: copy a data dir keeping only the listed utterances.
subset_by_utts() {
    local in=$1 out=$2 list=$3 f
    mkdir -p "$out"
    for f in wav.scp text utt2spk utt2num_samples feats.scp utt2num_frames; do
        [ -f "$in/$f" ] || continue
        awk 'NR==FNR { keep[$1] = 1; next } ($1 in keep)' "$list" "$in/$f" > "$out/$f"
    done
    for f in feats_type feats_dim fs; do [ -f "$in/$f" ] && cp "$in/$f" "$out/$f"; done
    utils/utt2spk_to_spk2utt.pl "$out/utt2spk" > "$out/spk2utt"
}

# write_exp_run_sh DIR STAGE: a run.sh in an exp dir that re-runs that stage with the same flags.
write_exp_run_sh() {
    mkdir -p "$1"
    cat > "$1/run.sh" <<EOF
#!/usr/bin/env bash
# Generated by egs/TEMPLATE/xytok.sh: re-runs stage $2 with the flags of the original run.
cd "$(pwd)" && $_run_args --stage $2 --stop_stage $2 "\$@"
EOF
    chmod +x "$1/run.sh"
}

trap 'rc=$?; [ $rc -ne 0 ] && log "FAILED (exit $rc) after ${SECONDS}s; the failing job log is shown above"' EXIT

# A run that starts after stage 2 must not build on dumps that no longer match data/.
if ! run_stage 2 && { run_stage 3 || run_stage 4 || run_stage 5 || run_stage 6 || run_stage 7 || run_stage 10; }; then
    for dset in $train_set $valid_set $test_sets; do
        [ -f "$data_feats/org/$dset/.done" ] || continue  # not dumped: the stages that need it say so
        fp_dump_org "$dset"
        if ! up_to_date "$data_feats/org/$dset/.done" "${_fp[@]}" && ! "$stale_legacy"; then
            die "$dset: ${stale_reason} since stage 2 dumped it: run from --stage 2 (it redoes what changed)"
        fi
        [ -f "$data_feats/$dset/.done" ] || continue
        fp_dump_filtered "$dset"
        if ! up_to_date "$data_feats/$dset/.done" "${_fp[@]}" && ! "$stale_legacy"; then
            die "$dset: ${stale_reason} since stage 2 filtered it: run from --stage 2 (it redoes what changed)"
        fi
    done
fi

# ---------------------------------------------------------------------------------------------
if run_stage 1; then
    log "Stage 1: data preparation: local/data.sh ${local_data_opts}"
    [ -x local/data.sh ] || die "local/data.sh missing or not executable in $(pwd)"
    # eval: nested quotes work, e.g. --local_data_opts "--parts 'dev-clean test-other'"
    eval "local/data.sh ${local_data_opts}"
    for dset in $train_set $valid_set $test_sets; do
        [ -d "data/$dset" ] || die "local/data.sh did not create data/$dset"
        utils/validate_data_dir.sh --no-feats "data/$dset"
    done
    if [ "$check_audio" = true ]; then
        # Every set's audio, before anything is dumped: all unusable files listed at once. A set
        # whose wav.scp is unchanged since its last clean check is not read again.
        _n_bad=0
        for dset in $train_set $valid_set $test_sets; do
            _chk=$dumpdir/audio_check/$dset
            if up_to_date "$_chk/.done" --file "data/$dset/wav.scp"; then
                log "  data/$dset: audio already checked, up to date ($_chk/.done)"
                continue
            fi
            rm -rf "$_chk"; mkdir -p "$_chk/logs"
            _nj=$(min "$nj" "$(wc -l < "data/$dset/wav.scp")")
            split_scp "data/$dset/wav.scp" "$_chk/logs" wav "$_nj"
            # shellcheck disable=SC2086
            ${train_cmd} --num_threads 1 JOB=1:"$_nj" "$_chk/logs/check_audio.JOB.log" \
                ${python} -m xytok.bin.datadir check-audio --report "$_chk/logs/bad.JOB" "$_chk/logs/wav.JOB.scp" \
                || die "data/$dset: the audio check itself failed (see $_chk/logs/check_audio.*.log)"
            _bad=$(for i in $(seq "$_nj"); do cat "$_chk/logs/bad.$i"; done)
            if [ -n "$_bad" ]; then
                while IFS=$'\t' read -r _utt _problem; do
                    log "  data/$dset: utterance $_utt: $_problem" >&2
                    _n_bad=$((_n_bad + 1))
                done <<< "$_bad"
            else
                log "  data/$dset: audio OK ($(wc -l < "data/$dset/wav.scp") files: readable, non-empty)"
                mark_done "$_chk/.done" --file "data/$dset/wav.scp"
            fi
        done
        [ "$_n_bad" -eq 0 ] || die "$_n_bad utterance(s) have unusable audio (listed above): drop them" \
            "in local/data.sh (or repair the files) and run stage 1 again (--check_audio false skips this check)"
    fi
fi

# ---------------------------------------------------------------------------------------------
if run_stage 2; then
    log "Stage 2: dump audio (${audio_format}) as ${fs} Hz mono to ${data_feats}, filter durations (${min_wav_duration}-${max_wav_duration} s)"
    case $audio_format in files|shards) ;; *) die "--audio_format $audio_format: use files or shards" ;; esac
    for dset in $train_set $valid_set $test_sets; do
        src=data/$dset
        org=$data_feats/org/$dset
        [ -f "$src/wav.scp" ] || die "$src/wav.scp not found: run stage 1 first"
        [ -f "$src/segments" ] && die "$src/segments: segmented data dirs are not supported; cut the audio in local/data.sh"
        fp_dump_org "$dset"
        if up_to_date "$org/.done" "${_fp[@]}"; then
            log "  $dset: already dumped, up to date ($org/.done)"
        else
            [ -f "$org/.done" ] && log "  $dset: ${stale_reason}; re-dumping"
            rm -f "$org/.done"
            _nj=$(min "$nj" "$(wc -l < "$src/wav.scp")")
            # What an earlier (killed, failed or outdated) dump finished is kept where it still holds:
            # files: every <utt>.wav whose wav.scp line is unchanged (resume; a cheap re-dump after an
            # utterance is added); shards: all of them when the source and the job split are unchanged.
            if [ "$audio_format" = files ]; then _layout="files $fs"; else _layout="shards $fs $shard_size_mb $_nj"; fi
            if [ "$(cat "$org/logs/layout" 2>/dev/null)" != "$_layout" ] || [ ! -f "$org/logs/src_wav.scp" ]; then
                rm -rf "$org"
            elif [ "$audio_format" = shards ]; then
                cmp -s "$src/wav.scp" "$org/logs/src_wav.scp" || rm -rf "$org"
            else
                awk 'NR == FNR { now[$0] = 1; next } !($0 in now) { print $1 }' "$src/wav.scp" "$org/logs/src_wav.scp" \
                    | while read -r _u; do rm -f "$org/data/$_u.wav"; done
            fi
            [ -d "$org/data" ] && log "  $dset: reusing the audio an earlier dump finished"
            rm -f "$org/logs"/*.scp "$org/logs"/utt2num_samples.*
            mkdir -p "$org/logs"
            echo "$_layout" > "$org/logs/layout"
            cp "$src/wav.scp" "$org/logs/src_wav.scp"  # what the dumped audio is made from
            log "  $dset: $(wc -l < "$src/wav.scp") utterances as $audio_format, $_nj jobs (logs: $org/logs/dump_audio.*.log)"
            fmt_opts="--audio_format $audio_format"
            if [ "$audio_format" = shards ]; then
                fmt_opts+=" --shard_prefix shard-JOB --shard_size_mb $shard_size_mb"
                # Sources with known 16 kHz lengths (e.g. MP3 in tar shards) are copied, not re-encoded.
                [ -f "$src/utt2num_samples" ] && fmt_opts+=" --utt2num_samples $src/utt2num_samples"
            fi
            # shellcheck disable=SC2086
            dump_jobs "$dset" "$src/wav.scp" "$src" "$org" "$fs" "$_nj" ${fmt_opts}
            fp_dump_org "$dset"
            mark_done "$org/.done" "${_fp[@]}"
        fi

        out=$data_feats/$dset
        fp_dump_filtered "$dset"
        if up_to_date "$out/.done" "${_fp[@]}"; then
            log "  $dset: already filtered, up to date ($out/.done)"
            continue
        fi
        [ -f "$out/.done" ] && log "  $dset: ${stale_reason}; filtering again (stage 3 features of $out are redone)"
        rm -rf "$out"; mkdir -p "$out"
        if [ "$dset" = "$train_set" ] || [ "$dset" = "$valid_set" ]; then
            awk -v lo="$min_wav_duration" -v hi="$max_wav_duration" -v fs="$fs" \
                '{ d = $2 / fs } (d >= lo && d <= hi) { print $1 }' "$org/utt2num_samples" > "$out/.keep"
        else  # test sets are scored whole
            cut -d' ' -f1 "$org/utt2num_samples" > "$out/.keep"
        fi
        n_in=$(wc -l < "$org/utt2num_samples"); n_out=$(wc -l < "$out/.keep")
        [ "$n_out" -gt 0 ] || die "$dset: no utterance left after the ${min_wav_duration}-${max_wav_duration} s duration filter"
        [ "$n_out" -lt "$n_in" ] && log "  $dset: duration filter dropped $((n_in - n_out)) of $n_in utterances"
        subset_by_utts "$org" "$out" "$out/.keep"
        rm -f "$out/.keep"
        utils/validate_data_dir.sh --no-feats "$out"
        mark_done "$out/.done" "${_fp[@]}"
    done
    # train and valid must not share an utterance (a corpus split that moved one but kept a copy)
    if [ "$train_set" != "$valid_set" ]; then
        _shared=$(LC_ALL=C comm -12 <(cut -d' ' -f1 "$data_feats/$train_set/wav.scp") <(cut -d' ' -f1 "$data_feats/$valid_set/wav.scp") | head -n 5)
        [ -z "$_shared" ] || log "  WARNING: $train_set and $valid_set share utterances (e.g. $(echo $_shared)): check local/data.sh's split"
    fi
fi

# ---------------------------------------------------------------------------------------------
if run_stage 3 && [ "$compute_feats" != true ]; then
    log "Stage 3: skipped (--compute_feats $compute_feats): training computes the log-mel on its device"
elif run_stage 3; then
    log "Stage 3: Whisper log-mel features (frames, 80) -> ${data_feats}/<set>/feats.scp"
    [ "$fs" -eq 16000 ] || die "--fs $fs: the model's Whisper front end works at 16000 Hz only"
    for dset in $train_set $valid_set $test_sets; do
        d=$data_feats/$dset
        [ -f "$d/.done" ] || die "$d is not dumped: run stage 2 first"
        _fp=(--file "$d/wav.scp" --file "$d/utt2num_samples" --opt fs="$fs")
        if up_to_date "$d/.feats.done" "${_fp[@]}"; then
            log "  $dset: features already computed, up to date ($d/.feats.done)"
            continue
        fi
        [ -f "$d/.feats.done" ] && log "  $dset: ${stale_reason}; computing the features again"
        rm -f "$d/.feats.done"
        rm -rf "$d/feats" "$d/feats.scp" "$d/utt2num_frames"
        mkdir -p "$d/feats/logs"
        _nj=$(min "$nj" "$(wc -l < "$d/wav.scp")")
        split_scp "$d/wav.scp" "$d/feats/logs" wav "$_nj"
        log "  $dset: $_nj jobs (logs: $d/feats/logs/compute_feats.*.log)"
        # shellcheck disable=SC2086
        ${train_cmd} --num_threads 1 JOB=1:"$_nj" "$d/feats/logs/compute_feats.JOB.log" \
            ${python} -m xytok.bin.compute_feats --wav_scp "$d/feats/logs/wav.JOB.scp" \
                --out_ark "$d/feats/feats.JOB.ark" --out_scp "$d/feats/feats.JOB.scp" --fs "$fs"
        for i in $(seq "$_nj"); do cat "$d/feats/feats.$i.scp"; done | LC_ALL=C sort > "$d/feats.scp"
        # frames = ceil(samples / 160), the count compute_feats checked for every utterance
        awk '{ printf "%s %d\n", $1, int(($2 + 159) / 160) }' "$d/utt2num_samples" > "$d/utt2num_frames"
        echo 80 > "$d/feats_dim"
        [ "$(wc -l < "$d/feats.scp")" -eq "$(wc -l < "$d/wav.scp")" ] || die "$d/feats.scp: $(wc -l < "$d/feats.scp") lines, wav.scp has $(wc -l < "$d/wav.scp")"
        utils/validate_data_dir.sh "$d"
        mark_done "$d/.feats.done" "${_fp[@]}"
    done
fi

# ---------------------------------------------------------------------------------------------
if run_stage 4; then
    log "Stage 4: sentencepiece ${bpemode} tokenizer, ${nbpe} pieces, on ${data_feats}/${train_set}/text -> ${token_dir}"
    _fp=(--file "$data_feats/$train_set/text" --opt nbpe="$nbpe" --opt bpemode="$bpemode")
    if up_to_date "$token_dir/.done" "${_fp[@]}"; then
        log "  already trained, up to date ($token_dir/.done)"
    else
        [ -f "$token_dir/.done" ] && log "  ${stale_reason}; training the tokenizer again"
        rm -f "$token_dir/.done"
        [ -f "$data_feats/$train_set/text" ] || die "$data_feats/$train_set/text not found: run stage 2 first"
        mkdir -p "$(dirname "$token_dir")"
        ${python} -m xytok.bin.train_spm --text "$data_feats/$train_set/text" --vocab_size "$nbpe" \
            --model_type "$bpemode" --output_dir "$token_dir"
        mark_done "$token_dir/.done" "${_fp[@]}"
    fi
fi

# ---------------------------------------------------------------------------------------------
# launch flags for training: xytok.bin.train re-launches itself under torchrun for --ngpu N > 1 and
# for several nodes (one torchrun per node; under Slurm the endpoint comes from the MASTER_ADDR and
# MASTER_PORT that slurm.pl exports on the nodes). See xytok/train/launch.py.
train_launch_opts() {
    echo "--ngpu $ngpu"
    [ "$num_nodes" -le 1 ] || echo "--num_nodes $num_nodes"
    [ -z "$node_rank" ] || echo "--node_rank $node_rank"
    [ -z "$rdzv_endpoint" ] || echo "--rdzv_endpoint $rdzv_endpoint"
    [ -z "$master_port" ] || echo "--master_port $master_port"
}

# trained EXP: true when EXP finished training (.done and its export).
trained() { [ -f "$1/.done" ] && [ -f "$1/export/model.ckpt" ]; }

# The inputs of a training stage, in _fp: the dumped train/valid data, the tokenizer, the config's
# content, its args (+ for stage 2: the stage-1 model it starts from).
fp_train() {
    local n=$1 config=$2 args=$3 exp=$4 dset f
    _fp=()
    for dset in "$train_set" "$valid_set"; do
        for f in wav.scp text utt2num_samples; do _fp+=(--file "$data_feats/$dset/$f"); done
        [ "$compute_feats" = true ] && _fp+=(--file "$data_feats/$dset/feats.scp")
    done
    _fp+=(--file "$spm_model" --file "$config" --opt "stage${n}_args=$args" --opt compute_feats="$compute_feats")
    [ "$n" = 2 ] && _fp+=(--file "$stage1_exp/.done" --stat "$stage1_exp/export/model.ckpt")
    return 0
}

# stale_model_message EXP WHAT: a trained (or partly trained) model whose inputs changed is kept.
stale_model_message() {
    die "$1 $2 other inputs: ${stale_reason}. It is kept (retraining is not automatic): delete it" \
        "(rm -r $1) to train again on the current inputs, or train a new one beside it with --tag NAME;" \
        "to evaluate it as it is, start at --stage 7"
}

# needs_training N CONFIG ARGS EXP: false when EXP finished training on these inputs (or holds an
# empty marker from before fingerprints: $stale_legacy); stops the run when EXP was trained, or
# partly trained (a re-run would resume it), on other inputs; else true.
needs_training() {
    fp_train "$@"
    if trained "$4"; then
        up_to_date "$4/.done" "${_fp[@]}" && return 1
        "$stale_legacy" && return 1
        stale_model_message "$4" "was trained on"
    fi
    if [ -f "$4/.inputs" ] && ! up_to_date "$4/.inputs" "${_fp[@]}"; then
        stale_model_message "$4" "holds a partial training (it would resume) started on"
    fi
    return 0
}

# train_stage N CONFIG ARGS EXP [extra args]
train_stage() {
    local n=$1 config=$2 args=$3 exp=$4; shift 4
    [ -n "$config" ] || die "--stage${n}_config is required for stage $((n + 4))"
    [ -f "$config" ] || die "--stage${n}_config $config: file not found"
    if ! needs_training "$n" "$config" "$args" "$exp"; then
        if "$stale_legacy"; then
            log "  already trained ($exp/.done); WARNING: its marker predates stage fingerprints, so its" \
                "inputs are not recorded and are assumed to match; delete it to train again"
        else
            log "  already trained, up to date ($exp/.done); delete it to train again"
        fi
        return 0
    fi
    local done_marker=.feats.done
    [ "$compute_feats" = true ] || done_marker=.done  # no stage-3 features: the dumped audio is enough
    for f in "$data_feats/$train_set/$done_marker" "$data_feats/$valid_set/$done_marker" "$token_dir/.done"; do
        [ -f "$f" ] || die "$f missing: run stages 2-4 first"
    done
    mkdir -p "$exp"
    write_exp_run_sh "$exp" $((n + 4))
    mark_done "$exp/.inputs" "${_fp[@]}"
    local nodes_opt=""
    [ "$num_nodes" -gt 1 ] && nodes_opt="--num_nodes $num_nodes"
    log "  training log: $exp/train.log"
    # shellcheck disable=SC2086
    ${cuda_cmd} --gpu "$ngpu" ${nodes_opt} "$exp/train.log" \
        ${python} -m xytok.bin.train --config "$config" --output_dir "$exp" \
            --train_data "$data_feats/$train_set" --valid_data "$data_feats/$valid_set" \
            --spm_model "$spm_model" $(train_launch_opts) "$@" ${args}
    [ -f "$exp/export/model.ckpt" ] && [ -f "$exp/export/config.yaml" ] \
        || die "$exp: training ended without export/model.ckpt + export/config.yaml (see $exp/train.log)"
    cp "$exp/.inputs" "$exp/.done"
}

if run_stage 5; then
    log "Stage 5: stage-1 training -> ${stage1_exp}"
    _s1_extra=()
    # A stage-1 config with a `semantic_ctc_pretrain:` block (debug sizes, which cannot load Whisper)
    # first trains its semantic encoder with character CTC, then starts stage 1 from it.
    if [ -f "$stage1_config" ] && grep -q '^semantic_ctc_pretrain:' "$stage1_config" && \
        needs_training 1 "$stage1_config" "$stage1_args" "$stage1_exp"; then
        [ "$compute_feats" = true ] || die "$stage1_config has semantic_ctc_pretrain:, which reads stage-3 features: run with --compute_feats true"
        _ctc_dir=$stage1_exp/semantic_ctc
        log "  semantic encoder CTC pre-training (stand-in for Whisper) -> ${_ctc_dir} (log: ${_ctc_dir}/ctc.log)"
        mkdir -p "$_ctc_dir"
        ${train_cmd} "$_ctc_dir/ctc.log" \
            ${python} -m xytok.bin.train_semantic_ctc --config "$stage1_config" \
                --train_data "$data_feats/$train_set" --valid_data "$data_feats/$valid_set" --out "$_ctc_dir"
        log "  semantic encoder on ${valid_set}: $(grep -h '^%CER' "$_ctc_dir/ctc.log" | tail -n 1)"
        _s1_extra=(--semantic_init "$_ctc_dir/semantic_encoder.pth")
    fi
    train_stage 1 "$stage1_config" "$stage1_args" "$stage1_exp" "${_s1_extra[@]}"
fi

if run_stage 6; then
    [ -f "$stage1_exp/export/model.ckpt" ] || die "$stage1_exp/export/model.ckpt not found: run stage 5 first"
    [ -f "$stage2_config" ] || die "--stage2_config $stage2_config: file not found"
    # A decoder at another output rate R (generator_overrides, e.g. conf/train_stage2_24k.yaml) trains on
    # targets at R: train/valid dumped again at R from the source audio (same utterances as the 16 kHz
    # dump) into $dumpdir/raw_<R>; the encoder reads the 16 kHz dump (encoder_input; xytok.data.dataset).
    _out_fs=$(${python} -c 'import sys; from xytok.train.stage2 import config_output_rate as r; print(r(sys.argv[1]))' \
        "$stage2_config") || die "$stage2_config: cannot read its output rate"
    [[ $_out_fs =~ ^[0-9]+$ ]] || die "$stage2_config: output rate '$_out_fs' is not a number of Hz"
    _s2_data=()
    if [ "$_out_fs" -ne 16000 ]; then
        _rdump=$dumpdir/raw_$_out_fs
        log "Stage 6: stage-2 training -> ${stage2_exp} (init from ${stage1_exp}/export; decoder output ${_out_fs} Hz:" \
            "targets from ${_rdump}, encoder input from the 16 kHz dump ${data_feats})"
        for dset in $train_set $valid_set; do
            d=$_rdump/$dset
            [ -f "$data_feats/$dset/.done" ] || die "$data_feats/$dset not dumped: run stage 2 first"
            # inputs: the source entries (data/) of the 16 kHz dump's utterances, and the rate; a
            # change dumps the set again (fingerprinted marker, as every stage's)
            _fp=(--file "data/$dset/wav.scp" --file "$data_feats/$dset/wav.scp" --file "$data_feats/$dset/text"
                 --opt fs="$_out_fs")
            if up_to_date "$d/.done" "${_fp[@]}"; then
                log "  $dset: already dumped at ${_out_fs} Hz, up to date ($d/.done)"
                echo "$data_feats/$dset" > "$d/encoder_input"; continue
            fi
            [ -f "$d/.done" ] && log "  $dset: ${_out_fs} Hz dump out of date (${stale_reason}); dumping again"
            rm -rf "$d"; mkdir -p "$d/logs"
            awk 'NR==FNR { keep[$1] = 1; next } ($1 in keep)' "$data_feats/$dset/wav.scp" "data/$dset/wav.scp" \
                > "$d/logs/src.scp"
            _nj=$(min "$nj" "$(wc -l < "$d/logs/src.scp")")
            log "  $dset: $(wc -l < "$d/logs/src.scp") utterances at ${_out_fs} Hz, $_nj jobs (logs: $d/logs/dump_audio.*.log)"
            dump_jobs "$dset" "$d/logs/src.scp" "$data_feats/$dset" "$d" "$_out_fs" "$_nj"
            echo "$data_feats/$dset" > "$d/encoder_input"  # the encoder reads this 16 kHz dump (xytok.data.dataset)
            mark_done "$d/.done" "${_fp[@]}"
        done
        _s2_data=(--train_data "$_rdump/$train_set" --valid_data "$_rdump/$valid_set")
    else
        log "Stage 6: stage-2 training -> ${stage2_exp} (init from ${stage1_exp}/export)"
    fi
    # --generator_config: the architecture comes from the model being loaded (stage2.py lets it
    # win over any generator_params in the config), so stage-2 configs need not repeat it.
    train_stage 2 "$stage2_config" "$stage2_args" "$stage2_exp" --init_param "$stage1_exp/export/model.ckpt" \
        --generator_config "$stage1_exp/export/config.yaml" ${_s2_data[@]+"${_s2_data[@]}"}
fi

# ---------------------------------------------------------------------------------------------
# --inference_models "SPEC[#ARG...] ...": stages 7-10 once per model (this script re-run with
# --inference_model SPEC and that model's args), then one RESULTS.md over all of them.
if [ -n "$inference_models" ] && { run_stage 7 || run_stage 8 || run_stage 9 || run_stage 10; }; then
    _first=$(( stage > 7 ? stage : 7 )); _last=$(( stop_stage < 10 ? stop_stage : 10 ))
    _results_opts=()
    for _entry in $inference_models; do  # every spec checked before any model runs
        ${python} -m xytok.codecs "${_entry%%#*}" > /dev/null || die "--inference_models: bad model '${_entry%%#*}'"
    done
    for _entry in $inference_models; do
        IFS='#' read -r -a _parts <<< "$_entry"
        _spec=${_parts[0]}; _margs=("${_parts[@]:1}")
        _parsed=$(${python} -m xytok.codecs "$_spec") || die "--inference_models: bad model '$_spec'"
        read -r _ _label _ <<< "$_parsed"
        # one exp dir per (model, args): e.g. mimi_mimi_num_quantizers_8
        for _a in ${_margs[@]+"${_margs[@]}"}; do _label+=_$(echo "$_a" | tr -c 'A-Za-z0-9.\n' _ | sed 's/^_*//'); done
        log "=== model ${_spec} ${_margs[*]:-} (stages ${_first}-${_last}) -> ${expdir}/${_label}"
        # shellcheck disable=SC2086
        eval "$_run_args" --stage "$_first" --stop_stage "$_last" --inference_models "''" \
            --inference_model "$(printf %q "$_spec")" --inference_exp_name "$_label" \
            --inference_args "$(printf %q "$inference_args ${_margs[*]:-}")" \
            || die "model $_spec failed (stages ${_first}-${_last})"
        # the exp dir the run used (an xy exp/export dir keeps its own)
        _xp=$(cat "$expdir/.last_model_exp" 2>/dev/null) || die "model $_spec: no exp dir recorded"
        _results_opts+=(--exp_dir "$_xp/$inference_tag" --name "$(basename "$_xp")")
    done
    if [ "$_last" -ge 9 ]; then
        ${python} -m xytok.bin.make_results --recipe_dir . "${_results_opts[@]}" --test_sets "$test_sets" \
            --output RESULTS.md || die "make_results failed for the models of --inference_models"
        log "  wrote $(pwd)/RESULTS.md (one row per model and test set)"
    fi
    skip_stages+=" 7 8 9 10"
    # stages 11-12 pack/upload one trained xy model: only the one named by --inference_model
    [ -n "$inference_model" ] || skip_stages+=" 11 12"
fi

# Resolve --inference_model into model_config / model_ckpt / model_exp (where outputs go), and the
# model options of encode/decode (_model_opts) and of the probe (_probe_model_opts).
resolve_model() {
    local m=$inference_model family=xy label ident
    if [ -n "$m" ]; then
        local parsed
        parsed=$(${python} -m xytok.codecs "$m") || die "--inference_model $m: bad model spec"
        read -r family label ident <<< "$parsed"
        m=$ident
    fi
    # a non-xy codec, the released xy model (unless ./released exists: a local copy), or an xy hub
    # id: loaded through xytok.codecs by spec (a missing ORG/NAME not under $expdir is a hub id)
    if [ "$family" != xy ] || { [ "$m" = released ] && [ ! -e released ]; } || \
        { [ ! -e "$m" ] && [[ $m =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] && [[ $m != "$expdir"/* ]] && [[ $m != .* ]]; }; then
        model_spec=$family:$m; model_config=; model_ckpt=
        model_exp=$expdir/${inference_exp_name:-$label}
        _model_opts=(--model "$model_spec"); _probe_model_opts=(--codec "$model_spec")
        mkdir -p "$model_exp" "$expdir"; echo "$model_exp" > "$expdir/.last_model_exp"
        log "  model: ${model_spec} (outputs under $model_exp/$inference_tag)"
        return 0
    fi
    model_spec=
    if [ -z "$m" ]; then
        if [ -f "$stage2_exp/export/model.ckpt" ]; then m=$stage2_exp
        elif [ -f "$stage1_exp/export/model.ckpt" ]; then m=$stage1_exp
        else die "no model: neither $stage2_exp/export nor $stage1_exp/export exists; train (stages 5-6) or pass --inference_model"
        fi
    fi
    if [ -d "$m" ]; then
        if [ -f "$m/export/config.yaml" ]; then model_config=$m/export/config.yaml; model_exp=$m
        elif [ -f "$m/config.yaml" ]; then
            model_config=$m/config.yaml
            if [ "$(basename "$m")" = export ]; then model_exp=$(dirname "$m"); else model_exp=$expdir/model_$(basename "$m"); fi
        else die "--inference_model $m: no export/config.yaml or config.yaml inside"
        fi
    elif [ -f "$m" ]; then
        model_config=$m
        local d; d=$(dirname "$m")
        if [ "$(basename "$d")" = export ]; then model_exp=$(dirname "$d"); else model_exp=$expdir/model_$(basename "$d"); fi
    else
        die "--inference_model $m: not found"
    fi
    model_ckpt=$(dirname "$model_config")/model.ckpt
    [ -f "$model_ckpt" ] || die "$model_ckpt not found next to $model_config"
    _model_opts=(--config "$model_config" --checkpoint "$model_ckpt")
    _probe_model_opts=("${_model_opts[@]}")
    mkdir -p "$model_exp" "$expdir"; echo "$model_exp" > "$expdir/.last_model_exp"
    log "  model: $model_config + $model_ckpt (outputs under $model_exp/$inference_tag)"
}

if run_stage 7 || run_stage 8 || run_stage 9 || run_stage 10 || run_stage 11 || { run_stage 12 && [ -n "$hub_repo" ]; }; then
    resolve_model
    # --inference_args "--num_quantizers N": the probe embeds the same N codebooks
    if [[ " $inference_args " =~ [[:space:]]--num_quantizers[=[:space:]]+([0-9]+) ]]; then
        _probe_model_opts=(--codec "${model_spec:-xy:$model_config}" --num_quantizers "${BASH_REMATCH[1]}")
    fi
fi
# fp_model: the model of stages 7-10 as an input of their markers (a checkpoint by size + mtime).
fp_model() {
    _fp=(--opt model="${model_spec:-$model_config}")
    [ -z "${model_ckpt:-}" ] || _fp+=(--stat "$model_ckpt")
}
# current_or_legacy MARKER INPUTS...: up to date, or an empty marker from before fingerprints
# (results and models are not redone for that); else logs why and removes MARKER.
current_or_legacy() {
    up_to_date "$@" && return 0
    if "$stale_legacy"; then log "  $1: an empty marker from before stage fingerprints: kept as is (delete it to redo)"; return 0; fi
    [ -f "$1" ] && log "  $1: ${stale_reason}; redoing it"
    rm -f "$1"
    return 1
}
if "$gpu_inference"; then _infer_cmd="${cuda_cmd} --gpu 1"; _device=cuda; else _infer_cmd="${decode_cmd}"; _device=cpu; fi

if run_stage 7; then
    log "Stage 7: tokenize ${test_sets} (xytok encode, ${inference_nj} jobs, device=${_device})"
    for dset in $test_sets; do
        dir=$model_exp/$inference_tag/$dset
        fp_model; _fp+=(--file "$data_feats/$dset/wav.scp" --opt inference_args="$inference_args")
        if current_or_legacy "$dir/.encode.done" "${_fp[@]}"; then log "  $dset: already tokenized, up to date"; continue; fi
        [ -f "$data_feats/$dset/.done" ] || die "$data_feats/$dset not dumped: run stage 2 first"
        write_exp_run_sh "$model_exp/$inference_tag" 7
        rm -rf "$dir/codes"; mkdir -p "$dir/codes/logs"
        _nj=$(min "$inference_nj" "$(wc -l < "$data_feats/$dset/wav.scp")")
        split_scp "$data_feats/$dset/wav.scp" "$dir/codes/logs" wav "$_nj"
        # shellcheck disable=SC2086
        ${_infer_cmd} --num_threads 1 JOB=1:"$_nj" "$dir/codes/logs/encode.JOB.log" \
            xytok encode "${_model_opts[@]}" --device "$_device" \
                --no_progress ${inference_args} "$dir/codes/logs/wav.JOB.scp" "$dir/codes/codes.JOB.scp"
        for i in $(seq "$_nj"); do cat "$dir/codes/codes.$i.scp"; done | LC_ALL=C sort > "$dir/codes.scp"
        mark_done "$dir/.encode.done" "${_fp[@]}"
    done
    # BPS from the token stream (rows the codes hold x log2 codebook sizes x frame rate) -> RESULTS.md
    _info_opts=()
    for dset in $test_sets; do
        _info_opts+=(--codes "$model_exp/$inference_tag/$dset/codes.scp")
        [ -f "$data_feats/$dset/utt2num_samples" ] && _info_opts+=(--utt2num_samples "$data_feats/$dset/utt2num_samples")
    done
    ${python} -m xytok.bin.codec_info --model "${model_spec:-xy:$model_config}" "${_info_opts[@]}" --fs "$fs" \
        --out "$model_exp/$inference_tag/codec_info.json" || die "codec_info failed for $model_exp/$inference_tag"
fi

if run_stage 8; then
    log "Stage 8: detokenize ${test_sets} (xytok decode, ${inference_nj} jobs, device=${_device})"
    # One decode per entry of --decode_num_quantizers ("all" = every RVQ layer: <set>/wav);
    # n = the first n layers only: <set>/wav_nq<n> (xytok decode --num_quantizers n).
    for dset in $test_sets; do
        dir=$model_exp/$inference_tag/$dset
        for _nq in ${decode_num_quantizers:-all}; do
            if [ "$_nq" = all ]; then _sfx=; _nq_args=(); else _sfx=_nq$_nq; _nq_args=(--num_quantizers "$_nq"); fi
            _fp=(--file "$dir/.encode.done" --opt num_quantizers="$_nq" --opt inference_args="$inference_args")
            "$decode_streaming" && { _nq_args+=(--streaming); _fp+=(--opt decode_streaming=true); }
            if current_or_legacy "$dir/.decode$_sfx.done" "${_fp[@]}"; then
                log "  $dset${_sfx:+ ($_sfx)}: already detokenized, up to date"; continue
            fi
            [ -f "$dir/.encode.done" ] || die "$dir/codes.scp missing: run stage 7 first"
            rm -rf "$dir/wav$_sfx"; mkdir -p "$dir/wav$_sfx/logs"
            _nj=$(min "$inference_nj" "$(wc -l < "$dir/codes.scp")")
            split_scp "$dir/codes.scp" "$dir/wav$_sfx/logs" codes "$_nj"
            # shellcheck disable=SC2086
            ${_infer_cmd} --num_threads 1 JOB=1:"$_nj" "$dir/wav$_sfx/logs/decode.JOB.log" \
                xytok decode "${_model_opts[@]}" --device "$_device" \
                    --no_progress "${_nq_args[@]}" ${inference_args} "$dir/wav$_sfx/logs/codes.JOB.scp" \
                    "$dir/wav$_sfx/split.JOB"
            # One wav.scp over the shards (each shard dir holds its own wav.scp).
            for i in $(seq "$_nj"); do cat "$dir/wav$_sfx/split.$i/wav.scp"; done | LC_ALL=C sort > "$dir/wav$_sfx/wav.scp"
            if "$decode_streaming"; then
                ${python} -m xytok.bin.merge_streaming_reports --out "$dir/wav$_sfx/streaming.json" \
                    "$dir/wav$_sfx"/split.*/streaming.json | while read -r _line; do log "  $dset: $_line"; done \
                    || die "$dset: merging the streaming reports of stage 8 failed"
                [ -f "$dir/wav$_sfx/streaming.json" ] || die "$dset: no streaming report from xytok decode --streaming"
            fi
            mark_done "$dir/.decode$_sfx.done" "${_fp[@]}"
        done
    done
fi

if run_stage 9; then
    _align_ms=$align_max_lag_ms
    if [ "$_align_ms" = auto ]; then
        case ${model_spec:-xy:} in xy:*) _align_ms=0 ;; *) _align_ms=20 ;; esac
    fi
    log "Stage 9: scoring (${scoring_metrics}; ASR ${asr_backend}, language ${asr_language}) and RESULTS.md"
    for dset in $test_sets; do
        dir=$model_exp/$inference_tag/$dset
        # each stage-8 decode gets its own score dir (score, score_nq<n>): one RESULTS.md row each
        for _nq in ${decode_num_quantizers:-all}; do
            if [ "$_nq" = all ]; then _sfx=; else _sfx=_nq$_nq; fi
            _fp=(--file "$dir/.decode$_sfx.done" --file "$data_feats/$dset/wav.scp" --file "$data_feats/$dset/text"
                 --opt scoring="$scoring_metrics|$asr_backend|$scoring_args|$_align_ms" --opt asr_language="${asr_language:-}")
            if current_or_legacy "$dir/.score$_sfx.done" "${_fp[@]}"; then
                log "  $dset${_sfx:+ ($_sfx)}: already scored, up to date"; continue
            fi
            [ -f "$dir/.decode$_sfx.done" ] || die "$dir/wav$_sfx/wav.scp missing: run stage 8 first"
            rm -rf "$dir/score$_sfx"; mkdir -p "$dir/score$_sfx"
            # shellcheck disable=SC2086
            # One process per job, one thread each (xytok score sets it); ASR/SIM models on the GPU with --gpu_inference.
            ${_infer_cmd} --num_threads "$nj" "$dir/score$_sfx/score.log" \
                xytok score --ref "$data_feats/$dset/wav.scp" --hyp "$dir/wav$_sfx/wav.scp" \
                    --text "$data_feats/$dset/text" --metrics "$scoring_metrics" --asr_backend "$asr_backend" \
                    --asr_language "$asr_language" \
                    --nj "$nj" --device "$_device" --out "$dir/score$_sfx" --align_max_lag_ms "$_align_ms" ${scoring_args} \
                || die "$dset${_sfx:+ ($_sfx)}: xytok score failed (an ASR/SIM model that cannot load, or a metric that scored nothing): see $dir/score$_sfx/score.log"
            mark_done "$dir/.score$_sfx.done" "${_fp[@]}"
        done
    done
    # shellcheck disable=SC2086
    ${python} -m xytok.bin.make_results --recipe_dir . --exp_dir "$model_exp/$inference_tag" \
        --test_sets "$test_sets" --output RESULTS.md
    log "  wrote $(pwd)/RESULTS.md"
fi

if run_stage 10; then
    log "Stage 10: text-alignment probe -> ${model_exp}/probe"
    # run_probe DIR [EXTRA ARGS]: one probe run (trained codec, or --random_init for the control).
    run_probe() {
        local dir=$1 _fp; shift
        fp_model
        _fp+=(--file "$data_feats/$train_set/wav.scp" --file "$data_feats/$train_set/text"
              --file "$data_feats/$valid_set/wav.scp" --file "$data_feats/$valid_set/text" --opt probe_args="$probe_args $*" --opt asr_language="${asr_language:-}")
        if current_or_legacy "$dir/.done" "${_fp[@]}"; then
            log "  $dir: already probed, up to date"
        else
            mkdir -p "$dir"
            write_exp_run_sh "$dir" 10
            # shellcheck disable=SC2086
            ${_infer_cmd} "$dir/probe.log" \
                ${python} -m xytok.bin.probe "${_probe_model_opts[@]}" \
                    --train_data "$data_feats/$train_set" --valid_data "$data_feats/$valid_set" \
                    --device "$_device" --output_dir "$dir" --language "$asr_language" ${probe_args} "$@"
            mark_done "$dir/.done" "${_fp[@]}"
        fi
        while read -r _line; do log "  ${dir##*/}: ${_line}"; done < "$dir/wer.txt"  # %WER and %CER
    }
    # Control (--probe_baseline true): the same probe on an untrained codec of the same architecture
    # (random weights, k-means codebooks as at training step 0); a codec whose tokens carry text gives
    # a lower WER/CER. It runs beside the main probe (each probe is one single-threaded process).
    _control_pid=
    if "$probe_baseline" && [ "${_probe_model_opts[0]}" = --codec ]; then
        log "  --probe_baseline: no random-init control for ${model_spec:-$model_config} (xy exp/export models, all codebooks)"
    elif "$probe_baseline"; then
        run_probe "$model_exp/probe_random_init" --random_init &
        _control_pid=$!
    fi
    run_probe "$model_exp/probe"
    if [ -n "$_control_pid" ]; then
        wait "$_control_pid" || die "probe control failed: see $model_exp/probe_random_init/probe.log"
    fi
    # RESULTS.md's WER column is the probe's: refresh it when the test sets are already scored.
    if ls "$model_exp/$inference_tag"/*/score*/summary.json > /dev/null 2>&1; then
        ${python} -m xytok.bin.make_results --exp_dir "$model_exp/$inference_tag" --test_sets "$test_sets" \
            --output RESULTS.md
        log "  updated $(pwd)/RESULTS.md"
    fi
fi

if run_stage 11; then
    log "Stage 11: pack a hub-ready model folder -> ${model_exp}/packed"
    [ -z "${model_spec:-}" ] || die "stage 11 packs a trained xy model (exp/export dir), not ${model_spec}"
    # The weights are those stages 7-10 used (model_config's dir); the exp's config.yaml, when there,
    # becomes train_config.yaml. RESULTS.md (stage 9) goes into the model card.
    _results=(); [ -f RESULTS.md ] && _results=(--results RESULTS.md)
    _repo=(); [ -n "$hub_repo" ] && _repo=(--repo_id "$hub_repo")
    # shellcheck disable=SC2086
    ${python} -m xytok.bin.pack_model --exp_dir "$model_exp" --model_dir "$(dirname "$model_config")" \
        --out "$model_exp/packed" ${_results[@]+"${_results[@]}"} ${_repo[@]+"${_repo[@]}"} ${pack_args}
fi

if run_stage 12; then
    if [ -z "$hub_repo" ]; then
        log "Stage 12: nothing uploaded: no --hub_repo ORG/NAME given (stage 11's folder stays local)"
    else
        log "Stage 12: upload ${model_exp}/packed -> https://huggingface.co/${hub_repo} (private=${hub_private})"
        [ -f "$model_exp/packed/config.yaml" ] || die "$model_exp/packed/config.yaml not found: run stage 11 first"
        _private=(); "$hub_private" && _private=(--private)
        ${python} -m xytok.bin.upload_model --folder "$model_exp/packed" --repo_id "$hub_repo" ${_private[@]+"${_private[@]}"}
    fi
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
