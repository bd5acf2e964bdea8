#!/usr/bin/env bash
# Set up the environment if needed, lint, and run the test suite (offline, CPU).
# Extra arguments go to pytest, e.g. ./run_tests.sh -k cache -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
ensure_env
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
say "ruff check"
python -m ruff check .
say "pytest"
python -m pytest "$@"
