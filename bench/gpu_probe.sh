#!/usr/bin/env bash
# The settings probe behind BENCHMARKS.md "GPU" (after bench/gpu_check.sh): our CUDA-op
# tests, then ours beside PyTorch with TF32 on/off, cudarc's event tracking on/off,
# batch 64 vs 128, bf16 teachers. Uses the bundle of `make gpu-bundle` (copy this
# script beside it): bash bench/out/gpu/gpu_probe.sh  (log in $OUT or bench/out/gpu-run)
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../gpu-run}
mkdir -p "$out"
exec > >(tee "$out/gpu_probe.log") 2>&1
for b in models meal_ops_tests; do xz -dc "$here/$b.xz" > /tmp/$b && chmod +x /tmp/$b; done
libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({os.path.dirname(p) for r in roots
                       for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})))
PY
)
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export MEAL_DEVICE=cuda:0 MEAL_DTYPE=f32 RAYON_NUM_THREADS=$(nproc)
m=/tmp/models t="python3 $here/models_torch.py"
r() { echo "## $*"; timeout 60 "$@"; }
r /tmp/meal_ops_tests --ignored --test-threads 1 ops::cuda
r $m infer resnet152s 224 64 10
MEAL_CUDA_TF32=1 r $m infer resnet152s 224 64 10; echo "(tf32)"
MEAL_CUDA_EVENT_TRACKING=1 r $m infer resnet152s 224 64 10; echo "(event tracking)"
r $m infer resnet152s 224 128 5
r $t infer resnet152s 224 64 10
r $m train resnet50 224 32 5
MEAL_CUDA_TF32=1 r $m train resnet50 224 32 5; echo "(tf32)"
MEAL_CUDA_EVENT_TRACKING=1 r $m train resnet50 224 32 5; echo "(event tracking)"
r $m train resnet50 224 64 5
MEAL_DTYPE=bf16 r $t train resnet50 224 32 5
r $t train resnet50 224 32 5
MEAL_DTYPE=bf16 r $m infer resnet152s 224 64 10
MEAL_DTYPE=bf16 r $t infer resnet152s 224 64 10
r $m infer senet154 224 64 5
r $t infer senet154 224 64 5
