#!/usr/bin/env bash
# Teacher inference on the CPU in f32 and in bf16 (ours: bf16 convolution products with
# AVX512-BF16, or AMX where the CPU has it; PyTorch: CPU autocast bf16), side by side in
# one run, ROUNDS rounds alternating them. On a CPU with AMX, ours in bf16 runs twice: with
# the AMX kernel and with the AVX512-BF16 one (MEAL_AMX=0), marked "[avx512bf16]". Usage: bash bench/bf16_cpu.sh [ARCH] [RES] [BATCH] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-resnet152s} res=${2:-224} batch=${3:-8} rounds=${4:-3}
export RAYON_NUM_THREADS=${THREADS:-$(nproc)} THREADS=${THREADS:-$(nproc)}
grep -qw avx512_bf16 /proc/cpuinfo || { echo "this CPU has no AVX512-BF16: nothing to compare"; exit 0; }
bin=$(cargo bench -p meal-models --bench models --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $RAYON_NUM_THREADS threads, $arch $res batch $batch"
for r in $(seq "$rounds"); do
    for dt in f32 bf16; do
        MEAL_DTYPE=$dt "$bin" infer "$arch" "$res" "$batch" 2 2>&1 | grep -E "^ours"
        if [ "$dt" = bf16 ] && grep -qw amx_bf16 /proc/cpuinfo; then
            MEAL_AMX=0 MEAL_DTYPE=$dt "$bin" infer "$arch" "$res" "$batch" 2 2>&1 | grep -E "^ours" | sed 's/$/ [avx512bf16]/'
        fi
        MEAL_DTYPE=$dt python3 bench/models_torch.py infer "$arch" "$res" "$batch" 2 2>&1 | grep -E "^torch" \
            || echo "torch side skipped: pip install torch timm"
    done
done
