#!/usr/bin/env bash
# Idempotent installer: Debian packages for the mini recipe, a venv at tools/venv with xytok in it.
# Safe to re-run; it only does what is missing. Works on CPU machines and on GPU machines.
#
# Usage: tools/install.sh [--print-plan] [--help]
#   --print-plan   print the torch choice and what would be (re)installed, as key=value lines on
#                  stdout, and exit without touching apt, pip or the venv (same: XYTOK_INSTALL_DRY_RUN=1)
#
# Which torch build: when `nvidia-smi -L` lists a GPU, a CUDA build (torch==VERSION, excluding the
# +cpu wheel, from pip's indexes: PyPI's Linux wheels are CUDA builds; set XYTOK_TORCH_CUDA_INDEX
# to e.g. https://download.pytorch.org/whl/cu126 for another CUDA); otherwise the CPU build
# (torch==VERSION with https://download.pytorch.org/whl/cpu as an extra index when that answers,
# else whatever pip's own configuration offers). It says which and why. The choice is kept in the
# venv's stamp; when it changes (say the venv was made on a CPU node and now runs on a GPU node)
# torch is uninstalled and installed again.
#
# Environment overrides:
#   XYTOK_VENV             venv path (default: tools/venv)
#   XYTOK_TORCH            torch requirement (pip words), overriding the choice above, e.g. "torch" to
#                          keep what pip picks, or "torch==2.13.0 --extra-index-url URL"; "" uses a
#                          torch that is already in the venv
#   XYTOK_TORCH_CPU_INDEX  extra index for the CPU build ("" = pip's configured indexes only)
#   XYTOK_TORCH_CUDA_INDEX extra index for the CUDA build (default "": pip's configured indexes)
#   XYTOK_NO_APT=1         never call apt-get (the mini recipe then needs flite/sox/... from elsewhere)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${XYTOK_VENV:-$root/tools/venv}
torch_version=2.13.0
dry_run=${XYTOK_INSTALL_DRY_RUN:-0}
log() { echo "[install $(date +%H:%M:%S)] $*" >&2; }
for a in "$@"; do
  case "$a" in
    --print-plan) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
  esac
done

# 1. The torch plan: which build, from where, and whether the venv's torch must be replaced.
gpu_line=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
  gpu_why="no nvidia-smi on PATH"
elif ! smi=$(if command -v timeout >/dev/null; then timeout 60 nvidia-smi -L; else nvidia-smi -L; fi 2>&1); then
  gpu_why="nvidia-smi -L failed: $(head -n 1 <<<"$smi")"
elif gpu_line=$(grep -m 1 '^GPU [0-9]' <<<"$smi"); then
  gpu_why="nvidia-smi lists $(grep -c '^GPU [0-9]' <<<"$smi") GPU(s): $gpu_line"
else
  gpu_why="nvidia-smi -L lists no GPU"
fi

# index_answers URL: true when pip could read URL (file:// dir exists, or http(s) answers in 10 s).
index_answers() {
  case "$1" in
    file://*) [ -d "${1#file://}" ] ;;
    http://*|https://*) python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$1" \
                          >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

torch_index=""
if [ "${XYTOK_TORCH+set}" = set ]; then
  torch_req=$XYTOK_TORCH
  if [ -n "$torch_req" ]; then
    torch_choice="custom:$torch_req"; torch_why="XYTOK_TORCH is set ($gpu_why)"
  else
    torch_choice="keep"; torch_why="XYTOK_TORCH is empty: the venv's torch is kept"
  fi
elif [ -n "$gpu_line" ]; then
  torch_choice=cuda; torch_why=$gpu_why
  # Local-version exclusion: a +cpu wheel offered by pip's config (find-links) must not win.
  torch_req="torch==$torch_version,!=$torch_version+cpu"
  torch_index=${XYTOK_TORCH_CUDA_INDEX-}
else
  torch_choice=cpu; torch_why=$gpu_why
  torch_req="torch==$torch_version"
  torch_index=${XYTOK_TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}
  if [ -n "$torch_index" ] && ! index_answers "$torch_index"; then
    log "CPU torch index $torch_index does not answer: using pip's configured indexes"
    torch_index=""
  fi
fi

stamp="$venv/.xytok-installed"
want=$(printf '%s\n' "$( (cat "$root/setup.py"; echo "$torch_req") | sha1sum | cut -d' ' -f1)" \
       "torch=$torch_choice")
prev_choice=""
if [ -f "$stamp" ]; then
  prev_choice=$(sed -n 's/^torch=//p' "$stamp")
  if [ -z "$prev_choice" ] && [ -x "$venv/bin/python" ]; then  # stamp of an older install.sh
    prev_choice=$("$venv/bin/python" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' \
                  2>/dev/null || true)
  fi
fi
if [ ! -x "$venv/bin/python" ]; then venv_action=create
elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then venv_action=up-to-date
else venv_action=install
fi
torch_reinstall=no
if [ "$venv_action" = install ] && [ -n "$prev_choice" ] && [ "$torch_choice" != keep ] \
   && [ "$prev_choice" != "$torch_choice" ]; then
  torch_reinstall=yes
fi

log "torch: ${torch_choice} build, because ${torch_why}"
index_desc=${torch_index:-"pip's configured indexes"}
log "torch: requirement '${torch_req}', index: ${index_desc}"
[ "$torch_reinstall" = yes ] && log "torch: the venv has the ${prev_choice} build: it will be re-installed"
if [ "$dry_run" = 1 ]; then
  printf '%s=%s\n' torch_choice "$torch_choice" torch_reason "$torch_why" torch_requirement "$torch_req" \
    torch_index "$torch_index" venv "$venv" venv_action "$venv_action" previous_choice "$prev_choice" \
    torch_reinstall "$torch_reinstall"
  exit 0
fi

# 2. Debian packages (TTS voices, sox, real LibriVox speech) used to build egs/mini.
apt_pkgs=(flite espeak-ng sox pocketsphinx-testdata)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${XYTOK_NO_APT:-0}" = 1 ] || ! command -v apt-get >/dev/null; then
    log "WARNING: missing Debian packages ${missing[*]}; egs/mini needs them (install them yourself)"
  else
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    log "apt-get install ${missing[*]}"
    $sudo apt-get update -qq >/dev/null 2>&1 || log "WARNING: apt-get update failed; trying install anyway"
    aptlog=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >"$aptlog" 2>&1; then
      tail -20 "$aptlog" >&2; log "ERROR: apt-get install ${missing[*]} failed (log above)"; exit 1
    fi
    rm -f "$aptlog"
  fi
fi

# 3. The venv. The stamp (setup.py's hash + the torch choice) makes a re-run instant when nothing changed.
if [ "$venv_action" = up-to-date ]; then
  log "venv up to date: $venv"
else
  [ -x "$venv/bin/python" ] || { log "creating venv $venv"; python3 -m venv "$venv"; }
  py="$venv/bin/python"
  "$py" -m pip install -q --upgrade pip 'setuptools>=77.0.3,<81' wheel
  if [ "$torch_reinstall" = yes ]; then
    # pip would keep the installed build: torch==V is satisfied by V+cpu and by V+cu12x alike.
    log "pip uninstall torch (${prev_choice} build)"
    "$py" -m pip uninstall -q -y torch
  fi
  log "pip install $torch_req xytok[all] (first time: a few minutes)"
  index_opt=(); [ -z "$torch_index" ] || index_opt=(--extra-index-url "$torch_index")
  # torch is named on the same command line so the resolver keeps the pinned wheel.
  # shellcheck disable=SC2086
  "$py" -m pip install -q "${index_opt[@]}" $torch_req -e "$root[all]"
  # The speechtokenizer codec family's package, outside [all]: it requires a torchaudio that must match
  # torch exactly, while inference needs only torch + einops, so --no-deps (xytok/codecs/speechtokenizer.py).
  if ! "$py" -m pip install -q --no-deps 'speechtokenizer>=1.0' einops; then
    log "ERROR: pip install --no-deps speechtokenizer einops failed (the speechtokenizer codec family)"; exit 1
  fi
  echo "$want" > "$stamp"
fi
# An editable install made while the tree was incomplete maps no packages: check from outside it.
if ! (cd / && "$venv/bin/python" -c 'import xytok.cli' >/dev/null 2>&1); then
  log "xytok is not importable from the venv: re-registering the editable install"
  "$venv/bin/python" -m pip install -q --no-deps -e "$root"
fi
py="$venv/bin/python"
if [ "$torch_choice" = cuda ]; then
  # A CPU build (a +cpu wheel pinned elsewhere) or a CUDA newer than the driver both end up here.
  if ! got=$("$py" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'); then
    log "WARNING: torch does not import in $venv"
  elif [[ $got != *" True" ]]; then
    log "WARNING: a GPU is present but torch ($got = version, CUDA, usable) cannot use it; pick a"
    log "         build for your driver, e.g. XYTOK_TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu126"
  else
    log "torch $got: CUDA works"
  fi
fi

# 4. torchaudio workaround. xytok itself never imports torchaudio, but a CUDA torchaudio wheel next
#    to a CPU torch breaks any import of it (libc10_cuda.so missing). Fix only that failure.
if "$py" -c 'import importlib.util,sys; sys.exit(0 if importlib.util.find_spec("torchaudio") else 1)'; then
  if ! err=$("$py" -c 'import torchaudio' 2>&1); then
    if grep -q 'libc10_cuda' <<<"$err"; then
      purelib=$("$py" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
      log "torchaudio is a CUDA build on a CPU torch: removing its compiled extension"
      rm -f "$purelib"/torchaudio/lib/*.so
    else
      log "WARNING: torchaudio fails to import for another reason:"; echo "$err" | tail -3 >&2
    fi
  fi
fi
log "ready: source $venv/bin/activate"
