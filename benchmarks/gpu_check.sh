#!/usr/bin/env bash
# GPU checks and measurements (benchmarks/gpu_check.py): a 1-process NCCL DDP run of the debug
# stage-1 config, paper-size bf16 training speed/memory, batched tokenization fp32 vs bf16.
# ~4-5 minutes on one H200, at most 8. Without a GPU it says so and exits 0.
#
#   benchmarks/gpu_check.sh [--python PY] [--wheels DIR] [gpu_check.py options: --parts, --out, ...]
#
# --python PY   interpreter (default: $XYTOK_PYTHON, else tools/venv/bin/python, else python3)
# --wheels DIR  wheels for packages the interpreter lacks (soundfile, cffi, pycparser, jiwer, ...):
#               installed offline into /tmp/xytok_site (prepended to PYTHONPATH) when an import
#               fails. Default: .whl at the repo root if it exists.
# Output also goes to $OUT/gpu_check.log when $OUT is set (summary.json and the training logs are
# written there by the Python part). Exit status 1 if a part failed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

python=${XYTOK_PYTHON:-}
wheels=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --python=*) python=${1#*=}; shift ;;
    --wheels) wheels=$2; shift 2 ;;
    --wheels=*) wheels=${1#*=}; shift ;;
    -h|--help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      echo
      args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$python" ]; then
  if [ -x "$root/tools/venv/bin/python" ]; then python=$root/tools/venv/bin/python; else python=python3; fi
fi
if [ -z "$wheels" ] && [ -d "$root/.whl" ]; then wheels=$root/.whl; fi

run_checks() {
export PYTHONUNBUFFERED=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

# Modules the checks import beyond torch/transformers/numpy/scipy/yaml (the data path reads wavs
# with soundfile; validation CER uses jiwer).
need="soundfile jiwer"
missing=$("$python" - $need <<'EOF'
import importlib, sys
bad = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        bad.append(name)
print(" ".join(bad))
EOF
)
if [ -n "$missing" ]; then
  if [ -n "$wheels" ] && compgen -G "$wheels/*.whl" > /dev/null; then
    site=/tmp/xytok_site
    # Only the wheels of distributions this interpreter lacks: a wheel of something it has (numpy,
    # typing_extensions, ...) would shadow the image's own build.
    mapfile -t todo < <("$python" - "$wheels"/*.whl <<'EOF'
import importlib.metadata as md, os, sys
for whl in sys.argv[1:]:
    name = os.path.basename(whl).split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(whl)
EOF
)
    echo "gpu_check.sh: $python lacks: $missing; installing into $site: ${todo[*]##*/}"
    if [ ${#todo[@]} -gt 0 ]; then
      "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${todo[@]}" \
        || echo "gpu_check.sh: WARNING: pip install from $wheels failed"
    fi
    export PYTHONPATH="$root:$site${PYTHONPATH#$root}"
  else
    echo "gpu_check.sh: $python lacks: $missing (no --wheels DIR given; parts that need them will fail)"
  fi
fi

cd "$root"
"$python" "$root/benchmarks/gpu_check.py" ${args[@]+"${args[@]}"}
}

if [ -n "${OUT:-}" ]; then  # also into $OUT, which the GPU runner collects
  mkdir -p "$OUT"
  run_checks 2>&1 | tee -a "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
run_checks
