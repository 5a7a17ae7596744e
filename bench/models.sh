#!/usr/bin/env bash
# Teacher inference and student train step, ours (stock candle ops today) beside PyTorch +
# timm on the same cores in one run. Usage: bash bench/models.sh [THREADS]
# The PyTorch side needs torch and timm (pip); skipped with a message when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
export RAYON_NUM_THREADS=$threads THREADS=$threads
cargo bench -p meal-common --bench models --no-run >&2
have_torch=0
python3 -c "import torch, timm" 2>/dev/null && have_torch=1
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads"
run() {
    cargo bench -q -p meal-common --bench models -- "$@" 2>/dev/null
    if [ $have_torch = 1 ]; then python3 bench/models_torch.py "$@"; else echo "torch side skipped: pip install torch timm"; fi
}
run infer resnet152s 112 16 2
run infer senet154 112 16 2
run train resnet50 112 16 2
run infer resnet152s 224 8 1
run infer senet154 224 8 1
run train resnet50 224 8 1
