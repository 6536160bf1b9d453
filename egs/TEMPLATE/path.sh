# Environment for a recipe; sourced from egs/<corpus> by xytok.sh (and by you, for manual commands).
# (readlink -f: recipes link path.sh from egs/TEMPLATE, possibly from outside the repo)
MAIN_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
# The venv that tools/install.sh makes; a user's own activated environment works too.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$MAIN_ROOT/tools/venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "$MAIN_ROOT/tools/venv/bin/activate"
fi
export PATH=$MAIN_ROOT/utils:$PATH
# xytok is pip-installed (-e); the repo root on PYTHONPATH also covers a checkout without install.
export PYTHONPATH=$MAIN_ROOT${PYTHONPATH:+:$PYTHONPATH}
# Kaldi tools sort and compare ids bytewise.
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
