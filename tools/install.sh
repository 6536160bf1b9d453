#!/usr/bin/env bash
# Idempotent installer: Debian packages for the mini recipe, a venv at tools/venv with xytok in it.
# Safe to re-run; it only does what is missing. Works on CPU machines and on GPU machines.
#
# Environment overrides:
#   XYTOK_VENV      venv path (default: tools/venv)
#   XYTOK_TORCH     torch requirement (default: torch==2.13.0; e.g. "torch" to keep what pip picks
#                   on a GPU machine, or "" to use a torch that is already in the venv)
#   XYTOK_NO_APT=1  never call apt-get (the mini recipe then needs flite/sox/... from elsewhere)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${XYTOK_VENV:-$root/tools/venv}
torch_req=${XYTOK_TORCH-torch==2.13.0}
log() { echo "[install $(date +%H:%M:%S)] $*" >&2; }

# 1. Debian packages (TTS voices, sox, real LibriVox speech) used to build egs/mini.
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

# 2. The venv. A stamp holding setup.py's hash makes a re-run instant when nothing changed.
stamp="$venv/.xytok-installed"
want=$( (cat "$root/setup.py"; echo "$torch_req") | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "venv up to date: $venv"
else
  [ -x "$venv/bin/python" ] || { log "creating venv $venv"; python3 -m venv "$venv"; }
  py="$venv/bin/python"
  "$py" -m pip install -q --upgrade pip 'setuptools>=77.0.3,<81' wheel
  log "pip install $torch_req xytok[all] (first time: a few minutes)"
  # torch is named on the same command line so the resolver keeps the pinned wheel.
  # shellcheck disable=SC2086
  "$py" -m pip install -q $torch_req -e "$root[all]"
  echo "$want" > "$stamp"
fi
# An editable install made while the tree was incomplete maps no packages: check from outside it.
if ! (cd / && "$venv/bin/python" -c 'import xytok.cli' >/dev/null 2>&1); then
  log "xytok is not importable from the venv: re-registering the editable install"
  "$venv/bin/python" -m pip install -q --no-deps -e "$root"
fi

# 3. torchaudio workaround. xytok itself never imports torchaudio, but a CUDA torchaudio wheel next
#    to a CPU torch breaks any import of it (libc10_cuda.so missing). Fix only that failure.
py="$venv/bin/python"
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
