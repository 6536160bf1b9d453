#!/usr/bin/env bash
# Shared by the local/data.sh of corpora released as OpenSLR <part>.tar.gz archives (LibriSpeech,
# LibriTTS); sourced, not run. Needs log(), and the caller's $download / $remove_archive options.
#
# select_parts CORPUS "ALL_PARTS": sets $parts (unless given) from the run's sets (XYTOK_TRAIN_SET,
#   XYTOK_VALID_SET, XYTOK_TEST_SETS exported by xytok.sh; _ turned back into -; train_960 = the three
#   training parts, which also sets want_960=true), deduplicated; an unknown part is an error.
# fetch_part ROOT CORPUS PART "MIRRORS" CHECKSUM_ARGS...: ROOT/CORPUS/PART when present (extracted
#   by us: ROOT/CORPUS/.PART.complete, or there with no half-done download of ours), else downloaded
#   from the first mirror that serves ROOT/PART.tar.gz (resumable, checked with CHECKSUM_ARGS, e.g.
#   --md5 X or --sha256 X --size N: python -m xytok.data.download) and extracted.

select_parts() {
    local corpus=$1 all=$2 s p
    want_960=false
    if [ -z "${parts:-}" ]; then
        for s in ${XYTOK_TRAIN_SET:-train_clean_100} ${XYTOK_VALID_SET:-dev_clean} ${XYTOK_TEST_SETS:-test_clean}; do
            if [ "$s" = train_960 ]; then want_960=true; parts+=" train-clean-100 train-clean-360 train-other-500"
            else parts+=" ${s//_/-}"; fi
        done
    fi
    parts=$(echo $parts | tr ' ' '\n' | awk '!seen[$0]++' | tr '\n' ' ')
    for p in $parts; do
        [[ " $all " == *" $p "* ]] || { echo "local/data.sh: unknown $corpus part '$p' (known: $all)" >&2; exit 1; }
    done
}

fetch_part() {
    local root=$1 corpus=$2 part=$3 mirrors=$4; shift 4
    local pdir=$root/$corpus/$part marker=$root/$corpus/.$part.complete m urls=() rm_opt=()
    if [ -f "$marker" ] || { [ -d "$pdir" ] && [ ! -e "$root/$part.tar.gz" ] && [ ! -e "$root/$part.tar.gz.part" ]; }; then
        log "$part: using $pdir"
        return 0
    fi
    "$download" || { echo "local/data.sh: $pdir not found and --download false" >&2; exit 1; }
    log "$part: downloading from OpenSLR (resumable, ${1#--} checked) into $root"
    for m in $mirrors; do urls+=(--url "$m/$part.tar.gz"); done
    "$remove_archive" && rm_opt=(--remove_archive)
    python3 -m xytok.data.download "${urls[@]}" "$@" --dest "$root/$part.tar.gz" \
        --extract_to "$root" --marker "$marker" ${rm_opt[@]+"${rm_opt[@]}"} \
        || { echo "local/data.sh: could not get $corpus $part (no network? download it to $root/$part.tar.gz or point the corpus variable in db.sh to an existing tree)" >&2; exit 1; }
    [ -d "$pdir" ] || { echo "local/data.sh: $root/$part.tar.gz did not contain $corpus/$part" >&2; rm -f "$marker"; exit 1; }
}
