#!/usr/bin/env bash
# Runs the test suite; sets up the environment first if needed (tools/install.sh is idempotent).
# Extra arguments go to pytest, e.g. `tools/test.sh -k frontend -x`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/install.sh
venv=${XYTOK_VENV:-$root/tools/venv}
export PATH="$venv/bin:$PATH"
# One BLAS thread per process: the suite starts multi-process jobs on small machines.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$venv/bin/python" -m pytest -q -ra --durations=15 tests "$@"
