#!/usr/bin/env bash
# Main job: set up the environment if needed (tools/install.sh is idempotent), then run the
# egs/mini recipe end to end on CPU. Arguments go to egs/mini/run.sh, e.g.
#   ./run.sh --stage 5          # resume from stage-1 training
#   ./run.sh --stop_stage 4     # data stages only
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$root/tools/install.sh"
cd "$root/egs/mini"
exec ./run.sh "$@"
