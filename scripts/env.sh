# Shared set-up for run_tests.sh and run_all.sh (sourced, not executed).
# Uses the active environment when it already has lare; otherwise creates .venv and installs the
# project with the tested versions of constraints.txt. Re-installs when pyproject.toml or
# constraints.txt change.

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

ensure_env() {
    local root stamp want
    root="$(pwd)"
    if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && [ "${VIRTUAL_ENV:-}" != "$root/.venv" ] \
        && python -c "import lare" 2>/dev/null; then
        say "using the active environment ($(command -v python))"
        return 0
    fi
    want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
    stamp=".venv/.lare-installed"
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv with $(python3 --version 2>&1)"
        python3 -m venv .venv
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing lare and its tested dependencies into .venv (first time: a few minutes, several GB)"
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
        echo "$want" > "$stamp"
    else
        say "using .venv (up to date)"
    fi
    # shellcheck disable=SC1091
    source .venv/bin/activate
}
