#!/usr/bin/env bash
# Run the LARE notebooks in order with papermill for one profile: Table 1 and Figure 3 in one command.
#   ./run_all.sh [--profile paper|demo|smoke] [-f FILE] [-p NAME VALUE] [-r NAME VALUE] [--force] [-v] [-h]
# This wrapper only sets up the environment (.venv, as ./run_tests.sh does; LARE_NO_SETUP=1 uses the
# python on PATH as it is), then hands over to `python -m lare`, which holds the logic:
# ./run_all.sh -h lists every option.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")"
# shellcheck disable=SC1091
source scripts/env.sh
if [ "${LARE_NO_SETUP:-0}" != 1 ]; then
    ensure_env
fi
command -v python >/dev/null 2>&1 || { echo "run_all.sh: error: no python on PATH" >&2; exit 1; }
cd "$here"  # relative -f files are taken from where the command was given
exec python -m lare "$@"
