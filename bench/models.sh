#!/usr/bin/env bash
# Teacher inference and student train step, ours beside PyTorch + timm on the same cores
# in one run, with each process's peak resident memory. Usage: bash bench/models.sh [THREADS]
# The PyTorch side needs torch and timm (pip); skipped with a message when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
export RAYON_NUM_THREADS=$threads THREADS=$threads
bin=$(cargo bench -p meal-models --bench models --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
have_torch=0
python3 -c "import torch, timm" 2>/dev/null && have_torch=1
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads"
# peak RSS of the process itself (the binary, not cargo); PyTorch's includes the
# interpreter and torch's own libraries (~0.3 GB before any tensor)
peak() { /usr/bin/time -f "    peak RSS %M KB" "$@"; }
run() {
    peak "$bin" "$@" 2>&1 | grep -E "^ours|peak RSS"
    if [ $have_torch = 1 ]; then peak python3 bench/models_torch.py "$@" 2>&1 | grep -E "^torch|peak RSS"; else echo "torch side skipped: pip install torch timm"; fi
}
run infer resnet152s 112 16 2
run train resnet50 112 16 2
run infer resnet152s 224 8 2
run train resnet50 224 8 2
run infer senet154 224 8 1
