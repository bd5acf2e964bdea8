#!/usr/bin/env bash
# The benchmarks on a lent GPU machine (one H100 / H200, 16 cores, no internet), as one script:
#   1. extraction of coca_ViT-L-14 (random weights, bf16 autocast): the full pipeline on JPEG files
#      on disk (several DataLoader worker counts) against the model's own forward pass;
#   2. the downstream of the paper profile (every Table 1 and Figure 3 method, 5 seeds) on the GPU;
#   3. a short f_Box / linear-probe training benchmark on the GPU.
# Prints the GPU's name and every figure; each step has a time limit (150 + 170 + 60 s), so the
# whole run stays well under 8 minutes (about 5 expected, model building and JPEG writing included).
# Figures also go to $OUT/ (if set) or benchmarks/results-gpu/.
#
#   bash benchmarks/gpu_all.sh                 # PYTHON=/path/to/python to pick the interpreter
#
# Needs a python with torch (CUDA) and open_clip_torch; lare itself is imported from this checkout
# (pip install -e . only if that fails: --no-deps when torch and open_clip import, no build isolation).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -z "${PYTHON:-}" ]; then
    for cand in .venv/bin/python python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
            PYTHON="$cand"; break
        fi
    done
fi
PYTHON="${PYTHON:-python3}"
RESULTS="${OUT:-benchmarks/results-gpu}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_all.txt"
: > "$LOG"
say() { printf '\n==> %s\n' "$*" | tee -a "$LOG"; }

if ! "$PYTHON" -c "import lare" 2>/dev/null; then
    if "$PYTHON" -c "import torch, open_clip" 2>/dev/null; then
        "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . || true
    else
        "$PYTHON" -m pip install --quiet --no-build-isolation -e . || true
    fi
fi
if ! "$PYTHON" -c "import lare, torch, open_clip, safetensors, PIL" 2>&1 | tee -a "$LOG"; then
    echo "cannot import lare and its dependencies with $PYTHON; set PYTHON=/path/to/python" | tee -a "$LOG"
    exit 1
fi

say "machine"
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$LOG"
import os, torch, open_clip
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CUDA unavailable)")
print("torch", torch.__version__, "CUDA", torch.version.cuda, "open_clip", open_clip.__version__, "CPU cores", os.cpu_count())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

T0=$SECONDS
say "1. extraction: coca_ViT-L-14, random weights, bf16, batch 128, 6144 JPEGs, workers 8/15"
timeout 150 "$PYTHON" benchmarks/bench_extraction.py --device cuda --model coca_ViT-L-14 --precision bf16 \
    --batch-size 128 --images 6144 --workers 8,15 --repeats 3 --skip-memory 2>&1 \
    | grep -v "No pretrained weights" | tee -a "$LOG"
echo "step 1 took $((SECONDS - T0)) s" | tee -a "$LOG"

T1=$SECONDS
say "2. downstream of the paper profile on the GPU (5 seeds; DOWNSTREAM_ARGS=--quick for 1)"
# shellcheck disable=SC2086
timeout 170 "$PYTHON" benchmarks/bench_downstream.py --device cuda --threads 0 ${DOWNSTREAM_ARGS:-} 2>&1 | tee -a "$LOG"
echo "step 2 took $((SECONDS - T1)) s" | tee -a "$LOG"

T2=$SECONDS
say "3. training: f_Box and linear probe on the GPU (short)"
timeout 60 "$PYTHON" benchmarks/bench_training.py --device cuda --repeats 2 --min-run 0.2 --epochs 10 --batch-sizes 256,1024,0 2>&1 | tee -a "$LOG"
echo "step 3 took $((SECONDS - T2)) s" | tee -a "$LOG"

say "done in $((SECONDS - T0)) s; log: $LOG"
