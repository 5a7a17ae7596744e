#!/usr/bin/env bash
# Build what bench/gpu_check.sh runs on a GPU machine that has no Rust toolchain: the
# cuda build of meal-data, meal-precompute, meal-student, the models bench and the
# CUDA-op tests (meal-models' unit tests), stripped
# and xz-compressed into bench/out/gpu/ (well under 60 MB in all). Run here, on a CPU
# machine: `make gpu-bundle`.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/cuda-toolchain.sh)"
export CARGO_TARGET_DIR=${CUDA_TARGET:-target/cuda}
cargo build --release --features cuda -p meal-data-cli -p meal-precompute -p meal-student
exe() { sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1; }
bench=$(cargo bench --features cuda -p meal-models --bench models --no-run 2>&1 | exe)
# each op alone at ResNet-50's shapes (models/benches/ops.rs)
opsbench=$(cargo bench --features cuda -p meal-models --bench ops --no-run 2>&1 | exe)
# the CUDA-op tests (models/src/ops/cuda/tests/, run there with --ignored)
optests=$(cargo test --release --features cuda -p meal-models --lib --no-run 2>&1 | exe)
[ -x "$bench" ] && [ -x "$opsbench" ] && [ -x "$optests" ] || { echo "bench or test binary not built" >&2; exit 1; }
cp "$optests" "$CARGO_TARGET_DIR/meal_ops_tests"
out=bench/out/gpu
rm -rf "$out" && mkdir -p "$out"
for b in "$CARGO_TARGET_DIR"/release/meal-{data,precompute,student} "$bench" "$opsbench" \
    "$CARGO_TARGET_DIR/meal_ops_tests"; do
    name=$(basename "$b" | sed 's/-[0-9a-f]\{16\}$//')
    strip -o "$out/$name" "$b"
    xz -T0 -6 "$out/$name"
done
cp bench/models_torch.py bench/gpu_check.sh bench/gpu_probe.sh bench/precompute_vs_infer.sh bench/gpu_summary.py "$out/"
du -ch "$out"/* | tail -1
ls -l "$out"
