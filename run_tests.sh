#!/usr/bin/env bash
# Set up the environment if needed, lint, and run the tests (offline, CPU).
#   ./run_tests.sh          the fast tier: every module touched, the docs checked (under 5 minutes on 2 cores)
#   ./run_tests.sh --all    everything: notebooks end to end, profiles, the demo twice, benchmarks, JupyterLab
#                           in headless Chromium (what .ci/run calls)
# Other arguments go to pytest, e.g. ./run_tests.sh -k cache -x, ./run_tests.sh --all tests/test_demo.py
set -euo pipefail
cd "$(dirname "$0")"
tier=(-m "not slow")
args=()
for a in "$@"; do
    if [ "$a" = "--all" ]; then tier=(); else args+=("$a"); fi
done
source scripts/env.sh
ensure_env
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
say "ruff check"
python -m ruff check .
if [ ${#tier[@]} -gt 0 ]; then
    # The fast tier's trainings are tiny: one intra-op thread runs them as fast on an idle machine, and
    # several times faster on a busy one, where OpenMP hand-offs between 2 threads dominate.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    say "pytest, fast tier (./run_tests.sh --all runs every test)"
else
    say "pytest, every test"
fi
status=0
python -m pytest ${tier[@]+"${tier[@]}"} ${args[@]+"${args[@]}"} || status=$?
if [ "$status" = 5 ] && [ ${#tier[@]} -gt 0 ]; then
    echo "no fast test matched; the slow ones run with: ./run_tests.sh --all $*" >&2
fi
exit "$status"
