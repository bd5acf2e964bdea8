#!/usr/bin/env bash
# Run the LARE notebooks in order with papermill for one profile: Table 1 and Figure 3 in one command.
# See usage() below, or ./run_all.sh -h.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./run_all.sh [--profile paper|demo|smoke] [-f FILE] [-p NAME VALUE]... [--force] [-v] [-h]

Executes notebooks/01..06 with papermill for a profile: notebooks 01-04 once per dataset file
params/<profile>/*.yaml (in sorted order), then 05 (Table 1) and 06 (Figure 3) once.
Executed notebooks go to runs/<profile>/notebooks/, the table and figure to figures/<profile>/.

Options:
  --profile NAME      parameter profile, a folder of params/ (default: paper):
                        paper  the paper's datasets and encoders (downloads what is missing)
                        demo   built-in synthetic data, offline, a few minutes on a laptop CPU
                        smoke  the smallest sizes, for tests
  -f FILE             extra papermill parameter file (YAML), given to every notebook after the
                      profile's own file; may be repeated
  -p NAME VALUE       extra parameter, given to every notebook last (it wins over the parameter
                      files); may be repeated. VALUE is read as YAML, as in the parameter files:
                      7 is an int, 0.5 a float, true a bool, "[0, 1]" a list, '{alpha: 0.3}' a
                      mapping; quote values with spaces, and use -r for a plain string
  -r NAME VALUE       like -p, but VALUE is always passed as a string
  --force             run every step, even those that are up to date
  -v, --verbose       stream the notebooks' output (papermill --log-output)
  -h, --help          show this help and exit

A step is skipped when its executed notebook exists and its stamp (runs/<profile>/stamps/) matches
a hash of its inputs: the notebook, the profile's parameter file, the extra -f files and options,
and the stamps of the steps it depends on (the earlier steps of its dataset; 05 and 06 depend on
all), and the source of the lare/ package. Changes to downloaded data are not tracked: use --force
after them.

Notebooks run with the repository root as working directory; their papermill output goes to
runs/<profile>/logs/. Environment: LARE_NO_SETUP=1 uses the python on PATH as it is, instead of setting up .venv the way
./run_tests.sh does.

Examples:
  ./run_all.sh --profile demo
  ./run_all.sh --profile paper -p data_root /data/lare
  ./run_all.sh --profile demo -f my_overrides.yaml --force
EOF
}

die_usage() { printf 'run_all.sh: %s\n\n' "$*" >&2; usage >&2; exit 2; }
die() { printf 'run_all.sh: error: %s\n' "$*" >&2; exit 1; }

now() {
    if [ -n "${EPOCHREALTIME:-}" ]; then
        printf '%s\n' "${EPOCHREALTIME/,/.}"
    else
        python -c 'import time; print(time.time())'
    fi
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
human_time() {  # seconds -> "12.3 s" or "4 min 05.2 s" or "1 h 02 min"
    awk -v s="$1" 'BEGIN {
        if (s < 60) printf "%.1f s", s;
        else if (s < 3600) printf "%d min %04.1f s", int(s / 60), s - 60 * int(s / 60);
        else printf "%d h %02d min", int(s / 3600), int((s - 3600 * int(s / 3600)) / 60) }'
}
sha() {  # sha256 of stdin, hex
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-64; else shasum -a 256 | cut -c1-64; fi
}
json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }

# --- options -----------------------------------------------------------------------------------
profile=paper
force=0
verbose=0
extra=()        # forwarded papermill options, in order
user_files=()   # the extra -f files (absolute), hashed by content
user_run_dir=""
user_figures_root=""
while [ $# -gt 0 ]; do
    case $1 in
        --profile)
            [ $# -ge 2 ] || die_usage "--profile needs a value"
            profile=$2; shift 2 ;;
        --profile=*) profile=${1#*=}; shift ;;
        -f|--parameters_file)
            [ $# -ge 2 ] || die_usage "$1 needs a FILE"
            [ -f "$2" ] || die "parameter file not found: $2"
            f=$(abspath "$2")
            extra+=(-f "$f"); user_files+=("$f"); shift 2 ;;
        -p|--parameters|-r|--parameters_raw)
            [ $# -ge 3 ] || die_usage "$1 needs a NAME and a VALUE"
            extra+=("$1" "$2" "$3")
            [ "$2" != run_dir ] || user_run_dir=$3
            [ "$2" != figures_root ] || user_figures_root=$3
            shift 3 ;;
        --force) force=1; shift ;;
        -v|--verbose) verbose=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown option: $1" ;;
    esac
done

cd "$(dirname "$0")"
root=$PWD

# --- profile and datasets ----------------------------------------------------------------------
profiles=()
for d in params/*/; do
    d=${d%/}
    if compgen -G "$d/*.yaml" >/dev/null; then profiles+=("${d#params/}"); fi
done
if [ ! -d "params/$profile" ] || ! compgen -G "params/$profile/*.yaml" >/dev/null; then
    die "unknown profile '$profile'; profiles found under params/: ${profiles[*]:-(none)}"
fi

param_files=()
datasets=()
while IFS= read -r f; do
    ds=$(sed -n -E 's/^dataset:[[:space:]]*//p' "$f" | head -n 1 | sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]+$//')
    ds=${ds#[\"\']}; ds=${ds%[\"\']}
    [ -n "$ds" ] || { ds=$(basename "$f" .yaml); }
    case $ds in *[!A-Za-z0-9_.-]*) die "$f: dataset name '$ds' must use only letters, digits, '.', '_' and '-'" ;; esac
    for other in ${datasets[@]+"${datasets[@]}"}; do
        [ "$other" != "$ds" ] || die "two files in params/$profile/ name the dataset '$ds'"
    done
    param_files+=("$f"); datasets+=("$ds")
done < <(printf '%s\n' "params/$profile"/*.yaml | LC_ALL=C sort)

run_dir=${user_run_dir:-runs/$profile}
nb_dir=$run_dir/notebooks
stamp_dir=$run_dir/stamps
log_dir=$run_dir/logs

per_dataset=(01_extract_embeddings 02_train_boxes 03_probe_lare 04_baselines)
per_profile=(05_table1 06_figure3)
for nb in "${per_dataset[@]}" "${per_profile[@]}"; do
    [ -f "notebooks/$nb.ipynb" ] || die "notebook not found: notebooks/$nb.ipynb"
done
total=$(( ${#per_dataset[@]} * ${#datasets[@]} + ${#per_profile[@]} ))

# --- environment -------------------------------------------------------------------------------
# shellcheck disable=SC1091
source scripts/env.sh
if [ "${LARE_NO_SETUP:-0}" != 1 ]; then
    ensure_env
fi
command -v python >/dev/null 2>&1 || die "no python on PATH (LARE_NO_SETUP=1 uses the python on PATH)"
python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("papermill") is None)' || die "papermill is not installed for $(command -v python)"
# papermill runs every notebook with the kernel named python3; register one for this python if
# none resolves (inside the environment, so that no other environment is affected).
if ! python -c 'from jupyter_client.kernelspec import KernelSpecManager as M; M().get_kernel_spec("python3")' \
        >/dev/null 2>&1; then
    say "registering a python3 Jupyter kernel for $(command -v python)"
    if python -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        python -m ipykernel install --sys-prefix --name python3 >/dev/null
    else
        python -m ipykernel install --user --name python3 >/dev/null
    fi
fi

# --- -p values are typed as YAML (lists and mappings included), as the preflight reads them -------
# papermill would pass "[0, 1]" as a string; so the -p values go to papermill as one generated
# parameter file, after the user's -f files (-p still wins over them). -r values stay strings.
pm_extra=()
p_args=()
i=0
while [ $i -lt ${#extra[@]} ]; do
    case "${extra[$i]}" in
        -f) pm_extra+=(-f "${extra[$((i + 1))]}"); i=$((i + 2)) ;;
        -r|--parameters_raw) pm_extra+=(-r "${extra[$((i + 1))]}" "${extra[$((i + 2))]}"); i=$((i + 3)) ;;
        *) p_args+=("${extra[$((i + 1))]}" "${extra[$((i + 2))]}"); i=$((i + 3)) ;;
    esac
done
if [ ${#p_args[@]} -gt 0 ]; then
    mkdir -p "$run_dir"
    overrides="$run_dir/.p-overrides.yaml"
    python - "$overrides" "${p_args[@]}" <<'PY' || die "cannot write $overrides"
import sys, yaml
out, args = sys.argv[1], sys.argv[2:]
values = {}
for name, raw in zip(args[::2], args[1::2]):
    try:
        values[name] = yaml.safe_load(raw)
    except yaml.YAMLError:
        values[name] = raw  # not YAML: the plain string
with open(out, "w") as f:
    yaml.safe_dump(values, f, sort_keys=False)
PY
    pm_extra+=(-f "$overrides")
fi

# --- preflight: parameters, datasets and encoders, all problems at once, before any work --------
if [ -f lare/preflight.py ]; then
    say "preflight: checking parameters, datasets and encoders"
    python -m lare.preflight --profile "$profile" ${extra[@]+"${extra[@]}"} || exit 1
fi

# --- one step ----------------------------------------------------------------------------------
step_no=0
n_run=0
n_skipped=0

# The library's source is part of every stamp: a change to lare/ re-runs the steps.
lib_hash=$( (cat lare/*.py lare/model_configs/*.json 2>/dev/null || true) | sha)

# step_hash NOTEBOOK PARAMS_FILE [PREVIOUS_STAMP...]
step_hash() {
    local nb=$1 pfile=$2 f
    shift 2
    {
        printf 'run_all.sh stamp v1\0profile %s\0lib %s\0' "$profile" "$lib_hash"
        for f in "$nb" "$pfile" ${user_files[@]+"${user_files[@]}"}; do
            printf 'file %s %s\0' "$f" "$(sha < "$f")"
        done
        printf 'option %s\0' ${extra[@]+"${extra[@]}"}
        for f in "$@"; do
            printf 'after %s %s\0' "$f" "$(sha < "$f")"
        done
    } | sha
}

# report_failure EXECUTED_NOTEBOOK LOG: print the first error of the executed notebook (or the log's tail)
report_failure() {
    local out=$1 log=$2
    if [ -f "$out" ] && python - "$out" <<'PY'
import json, re, sys
ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
try:
    nb = json.load(open(sys.argv[1], encoding="utf-8"))
except Exception:
    sys.exit(1)
for i, cell in enumerate(nb.get("cells", [])):
    for out in cell.get("outputs", []) or []:
        if out.get("output_type") != "error":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        lines = source.rstrip().splitlines()
        print(f"  error:   {out.get('ename', '?')}: {out.get('evalue', '')}")
        count = cell.get("execution_count")
        print(f"  in cell {i} of the executed copy" + (f" (In [{count}])" if count else "") + ":")
        for line in lines[:8]:
            print("    | " + line)
        if len(lines) > 8:
            print(f"    | ... ({len(lines) - 8} more lines)")
        tb = ansi.sub("", "\n".join(out.get("traceback", []))).rstrip().splitlines()
        tb = [t for t in tb if t.strip() and not set(t.strip()) <= {"-"}]
        if tb:
            print("  traceback (last lines):")
            for line in tb[-12:]:
                print("    " + line)
        sys.exit(0)
sys.exit(1)
PY
    then
        return 0
    fi
    echo "  (no error cell in the executed notebook) papermill said:"
    tail -n 25 "$log" 2>/dev/null | sed 's/^/    /'
}

# run_step NAME DATASET|"" PARAMS_FILE [PREVIOUS_STAMP...]; sets $last_stamp
run_step() {
    local name=$1 ds=$2 pfile=$3
    shift 3
    local key=$name label=$name
    if [ -n "$ds" ]; then key=${name}__$ds; label="$name ($ds)"; fi
    local nb=notebooks/$name.ipynb out=$nb_dir/$key.ipynb stamp=$stamp_dir/$key.json log=$log_dir/$key.log
    local hash dots start secs status=0
    step_no=$((step_no + 1))
    hash=$(step_hash "$nb" "$pfile" "$@")
    dots=$(printf '%*s' $(( ${#label} < 44 ? 46 - ${#label} : 2 )) '' | tr ' ' '.')
    printf '[%*d/%d] %s %s ' "${#total}" "$step_no" "$total" "$label" "$dots"
    last_stamp=$stamp
    if [ "$force" = 0 ] && [ -f "$out" ] && [ -f "$stamp" ] && grep -q "\"hash\": \"$hash\"" "$stamp"; then
        echo "skipped (up to date)"
        n_skipped=$((n_skipped + 1))
        return 0
    fi
    rm -f "$stamp"
    local cmd=(python -m papermill "$nb" "$out" -k python3 --no-progress-bar
               -f "$pfile" -p profile "$profile" -p run_dir "$run_dir"
               ${pm_extra[@]+"${pm_extra[@]}"})
    start=$(now)
    if [ "$verbose" = 1 ]; then
        echo
        "${cmd[@]}" --log-output 2>&1 | tee "$log" || status=$?
        printf '%s %s ' "        $label" "$dots"
    else
        "${cmd[@]}" --no-log-output >"$log" 2>&1 || status=$?
    fi
    secs=$(elapsed "$start" "$(now)")
    if [ "$status" != 0 ]; then
        echo "FAILED after $(human_time "$secs")"
        {
            echo
            echo "run_all.sh: notebook $name failed${ds:+ for dataset $ds} (profile $profile)."
            if [ -f "$out" ]; then
                echo "  executed copy (kept): $out"
            else
                echo "  no executed copy was written ($out)"
            fi
            echo "  papermill log:        $log"
            report_failure "$out" "$log"
            echo
            echo "Fix the problem and run the same command again: finished steps are skipped."
        } >&2
        exit 1
    fi
    printf '{"step": %s, "dataset": %s, "hash": "%s", "notebook": %s, "params": %s, "seconds": %s, "finished": "%s", "run_id": "%s"}\n' \
        "$(json_str "$name")" "$(json_str "$ds")" "$hash" "$(json_str "$out")" "$(json_str "$pfile")" "$secs" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(printf '%s %s %s' "$hash" "$(now)" "$$" | sha | cut -c1-16)" \
        > "$stamp.tmp"
    mv "$stamp.tmp" "$stamp"
    echo "done in $(human_time "$secs")"
    n_run=$((n_run + 1))
}

# --- the pipeline ------------------------------------------------------------------------------
mkdir -p "$nb_dir" "$stamp_dir" "$log_dir"
say "profile $profile: ${#datasets[@]} dataset(s) (${datasets[*]}), $total steps, run folder $run_dir/"
t0=$(now)
# Stage by stage, so that every dataset's embeddings exist before any box is trained. Each dataset
# is its own chain: a step depends on the earlier steps of its dataset.
chain=()   # chain[i]: the stamp paths of dataset i's finished steps, newline-separated
for i in "${!datasets[@]}"; do chain[i]=""; done
all_stamps=()
for name in "${per_dataset[@]}"; do
    for i in "${!datasets[@]}"; do
        prev=()
        while IFS= read -r s; do [ -z "$s" ] || prev+=("$s"); done <<< "${chain[i]}"
        run_step "$name" "${datasets[i]}" "${param_files[i]}" ${prev[@]+"${prev[@]}"}
        chain[i]+=$last_stamp$'\n'
        all_stamps+=("$last_stamp")
    done
done
for name in "${per_profile[@]}"; do
    run_step "$name" "" "${param_files[0]}" "${all_stamps[@]}"
    all_stamps+=("$last_stamp")
done

secs=$(elapsed "$t0" "$(now)")
say "all $total steps finished in $(human_time "$secs") ($n_run run, $n_skipped skipped)"
in_root() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$root" "$1" ;; esac; }
figs=$(in_root "${user_figures_root:-figures}")/$profile
echo "  Table 1 and Figure 3: $figs/"
if [ -d "$figs" ]; then
    for f in "$figs"/*; do [ -f "$f" ] && echo "    $f"; done
else
    echo "    (the folder does not exist: notebooks 05 and 06 should have written it)"
fi
echo "  executed notebooks:   $(in_root "$nb_dir")/"
