#!/usr/bin/env bash
# Input-pipeline throughput: decode + RandomResizedCrop + resize + flip + normalise, ours
# (1 and 2 threads) beside PIL + torchvision (1 thread) on the same JPEGs, in one run.
# The PyTorch side needs torch, torchvision, pillow (pip); it is skipped with a message
# when they are missing. Usage: bash bench/data_pipeline.sh [N_PER_CLASS] [RES]
set -euo pipefail
cd "$(dirname "$0")/.."
per_class=${1:-30}
res=${2:-224}
out=bench/out/jpegs_${per_class}
cargo build --release -p meal-data-cli >&2
bin=target/release/meal-data
if [ ! -f "$out/synth.json" ]; then
    # ImageNet-like: sides 375..500, JPEG quality 90, noisy content.
    "$bin" synth --out "$out" --train-per-class "$per_class" --val-per-class 0 \
        --min-side 375 --max-side 500 --quality 90 >&2
fi
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for t in 1 2; do
    "$bin" bench --data "$out/train" --res "$res" --threads "$t" --crops 1
done
"$bin" bench --data "$out/train" --res "$res" --threads 1 --crops 4
if python3 -c "import torch, torchvision, PIL" 2>/dev/null; then
    python3 bench/pil_pipeline.py "$out/train" --res "$res"
else
    echo "PyTorch side skipped: pip install torch torchvision pillow"
fi
