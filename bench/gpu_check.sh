#!/usr/bin/env bash
# The device check (README, "The CUDA build"): on a machine with one NVIDIA GPU, a CUDA 13
# driver, Python with PyTorch + timm and the cu13 NVIDIA wheels, no network and no Rust.
# It runs the binaries `make gpu-bundle` packed into bench/out/gpu/ and prints, in this
# order: the GPU; our binaries opening cuda:0; our CUDA ops against their CPU twins;
# teacher inference (resnet152s, senet154 at
# 224, f32 and bf16) and the ResNet-50 KD train step (TF32, and mixed precision), each
# with our convolutions and with cuDNN's (MEAL_CUDA_CONV=cudnn) beside PyTorch (timm,
# channels_last, autocast) in the same run; a tiny precompute + train on demo data with
# --device cuda:0, and the GPU store against a CPU store of the same crops; precompute
# at 224 against the teacher's pure inference speed.
# Every step has its own time limit, cut to what is left of a budget of 510 s (the
# remaining steps are skipped past it), so the whole script stays under 10 minutes (its
# stop-19 version ran in 118-149 s).
#   bash bench/out/gpu/gpu_check.sh        (results also in $OUT or bench/out/gpu-run)
# Rehearsal on a CPU machine (`make gpu-rehearsal`): GPU_CHECK_DEVICE=cpu runs every step
# with the same binaries and flags on the CPU at tiny sizes, so a broken command line,
# filter or parser shows up here and not in the device's few minutes. The GPU-only steps
# then fail as they must on a CPU (the op tests are listed, not run; --amp and bf16
# training are refused).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../gpu-run}
mkdir -p "$out"
# a rerun into the same folder starts afresh: the binaries rightly refuse to train into a
# finished run's folder, which would fail the pipeline steps for the wrong reason
rm -rf "$out"/data "$out"/teacher "$out"/labels-* "$out"/kd "$out"/kd-amp "$out"/pvi
exec > >(tee "$out/gpu_check.log") 2>&1
bin=$(mktemp -d)
for f in "$here"/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
# the cu13 libraries of the Python environment (cuBLAS, cuRAND, NVRTC) for dlopen
libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({os.path.dirname(p) for r in roots
                       for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})))
PY
)
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export MEAL_NO_PROGRESS=1 RAYON_NUM_THREADS=$(nproc)
DEV=${GPU_CHECK_DEVICE:-cuda:0}
if [ "$DEV" = cpu ]; then
    # args: network res batch iters, per step kind; the op tests listed (GPU-only)
    INFER="64 4 1" SE="64 2 1" TRAIN="64 4 1" OPS="2 1" PROF="64 2 1" PVI="2 1 4" LISTED=""
else
    INFER="224 64 10" SE="224 64 5" TRAIN="224 32 5" OPS="32 10" PROF="224 32 3" PVI="60 4 64" LISTED="--ignored"
fi
# each step's heading names the settings it runs under (dtype, cuDNN, profile). Past
# GPU_CHECK_BUDGET seconds (default 510: the device lends 15 minutes, start-up included,
# and a rerun needs some) the remaining steps are skipped, and the summary still runs.
budget=${GPU_CHECK_BUDGET:-510}
step() {
    local limit=$1; shift
    echo; echo "## $(env | grep -E '^MEAL_(DEVICE|DTYPE|CUDA_CONV|CUDA_FUSED|CUDA_OPS|CUDA_PINNED|CUDA_POOL_KEEP|CUDA_ONE_GEMM_BELOW|OP_PROFILE)=' | sort | tr '\n' ' ')$*"
    if [ "$SECONDS" -ge "$budget" ] && [ "${1##*/}" != gpu_summary.py ] && [ "${2##*/}" != gpu_summary.py ]; then
        echo "(skipped: ${SECONDS}s spent of the ${budget}s budget)"; return
    fi
    [ "$limit" -gt $((budget + 60 - SECONDS)) ] && limit=$((budget + 60 - SECONDS))
    [ "$limit" -lt 10 ] && limit=10
    timeout "$limit" "$@"; echo "(exit $?)"
}

echo "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"

# 1. one binary for CPU and GPU: the cuda build opens cuda:0 here
step 60 "$bin/meal-data" synth --out "$out/data" --train-per-class 20 --val-per-class 5

# 2. every CUDA op against its CPU twin (models/src/ops/cuda/tests/; ignored off a GPU)
step 120 "$bin/meal_ops_tests" $LISTED --test-threads 1 ops::cuda
# the convolutions through cuDNN instead of ours (MEAL_CUDA_CONV=cudnn, ops/cuda/cudnn.rs),
# and frozen teachers' fused NHWC forward through cuDNN (resnet/fused.rs, ops/cuda/nhwc.rs)
MEAL_CUDA_CONV=cudnn step 90 "$bin/meal_ops_tests" $LISTED --test-threads 1 --show-output conv frozen mixed fused

# 3. throughput beside PyTorch on the same GPU (MEAL_DEVICE / MEAL_DTYPE, bench/models_torch.py)
export MEAL_DEVICE=$DEV
for dt in f32 bf16; do
    export MEAL_DTYPE=$dt
    step 60 "$bin/models" infer resnet152s $INFER
    MEAL_CUDA_CONV=cudnn step 60 "$bin/models" infer resnet152s $INFER
    # cuDNN's convolutions in our NCHW forward, not the fused NHWC one
    MEAL_CUDA_CONV=cudnn MEAL_CUDA_FUSED=0 step 60 "$bin/models" infer resnet152s $INFER
    step 60 python3 "$here/models_torch.py" infer resnet152s $INFER
    step 60 "$bin/models" infer senet154 $SE
    MEAL_CUDA_CONV=cudnn step 60 "$bin/models" infer senet154 $SE
    step 60 python3 "$here/models_torch.py" infer senet154 $SE
done
export MEAL_DTYPE=f32
# the student's default: TF32 GEMMs (meal-student --tf32 true); then mixed precision
# (meal-student --amp true) beside PyTorch's AMP step. (Exact f32 and candle's own CUDA
# ops were measured at stop 19: 408-434 img/s, and 3.2x slower than ours.)
step 90 "$bin/models" train resnet50 $TRAIN
MEAL_CUDA_CONV=cudnn step 90 "$bin/models" train resnet50 $TRAIN
MEAL_DTYPE=bf16 step 90 "$bin/models" train resnet50 $TRAIN
MEAL_DTYPE=bf16 MEAL_CUDA_CONV=cudnn step 90 "$bin/models" train resnet50 $TRAIN
MEAL_DTYPE=bf16 step 60 python3 "$here/models_torch.py" train resnet50 $TRAIN
step 60 python3 "$here/models_torch.py" train resnet50 $TRAIN
# where the step's time goes: each op alone at ResNet-50's shapes (models/benches/ops.rs),
# ours and candle's, bf16 inference convolutions too
MEAL_DTYPE=bf16 step 90 "$bin/ops" $OPS
MEAL_CUDA_OPS=0 step 90 "$bin/ops" $OPS
# and inside the model: each of our ops' time per step, the device synchronised around
# each (ops::profile); the rest of the step is candle's ops, launches and copies
MEAL_OP_PROFILE=1 step 60 "$bin/models" train resnet50 $PROF
MEAL_DTYPE=bf16 MEAL_OP_PROFILE=1 step 60 "$bin/models" train resnet50 $PROF
MEAL_OP_PROFILE=1 step 60 "$bin/models" infer resnet152s $PROF
# the bf16 teacher's fused NHWC forward: cuDNN's calls against the layout swaps and the rest
MEAL_DTYPE=bf16 MEAL_CUDA_CONV=cudnn MEAL_OP_PROFILE=1 step 60 "$bin/models" infer resnet152s $PROF

# 4. the pipeline on the GPU: teacher, precompute (bf16 and f32), a KD student
S="$bin/meal-student"; P="$bin/meal-precompute"; D="$out/data"
step 90 "$S" train --data "$D/train" --val "$D/val" --arch demo_resnet10 --res 32 --epochs 2 \
    --batch 32 --crops-per-image 2 --loss ce --lr 0.05 --device "$DEV" --out "$out/teacher"
# (labels-ref-f32, made on the CPU, is the f32 reference of both GPU stores)
# (labels-fused-*: the teacher's fused NHWC forward through cuDNN)
for run in dev/bf16 dev/f32 ref/f32 fused/bf16 fused/f32; do
    dev=$DEV; [ "${run%/*}" = ref ] && dev=cpu
    conv=ours; [ "${run%/*}" = fused ] && conv=cudnn
    dt=${run#*/}
    MEAL_CUDA_CONV=$conv step 90 "$P" run --data "$D/train" \
        --teacher "demo_resnet10=$out/teacher/student.safetensors,size=32" \
        --crops-per-image 4 --device "$dev" --dtype "$dt" --out "$out/labels-${run%/*}-$dt"
done
step 60 "$P" verify "$out/labels-dev-bf16"
# one worker per device, here twice the same GPU: the merge path on CUDA
step 90 "$P" run --data "$D/train" --teacher "demo_resnet10=$out/teacher/student.safetensors,size=32" \
    --crops-per-image 4 --device "$DEV,$DEV" --dtype f32 --out "$out/labels-2dev"
step 60 "$P" verify "$out/labels-2dev"
step 120 "$S" train --data "$D/train" --val "$D/val" --labels "$out/labels-dev-bf16" --arch demo_tiny \
    --res 32 --epochs 2 --batch 32 --crops-per-image 2 --lr 0.05 --device "$DEV" --out "$out/kd"
# the same KD student under mixed precision (--amp true)
step 120 "$S" train --data "$D/train" --val "$D/val" --labels "$out/labels-dev-bf16" --arch demo_tiny \
    --res 32 --epochs 2 --batch 32 --crops-per-image 2 --lr 0.05 --device "$DEV" --amp true \
    --out "$out/kd-amp"
# the GPU stores against the CPU f32 store of the same crops (f32: float rounding only)
step 60 python3 - "$out" <<'PY'
import sys
try:
    import pyarrow.parquet as pq
except ImportError:
    sys.exit("store comparison skipped: no pyarrow here")
import glob, os
o = sys.argv[1]
for kind, dt, tol in (("dev", "f32", 1e-3), ("dev", "bf16", 5e-2), ("fused", "f32", 1e-3), ("fused", "bf16", 5e-2)):
    worst, rows = 0.0, 0
    for a in sorted(glob.glob(f"{o}/labels-{kind}-{dt}/shard-*.parquet")):
        b = a.replace(f"labels-{kind}-{dt}", "labels-ref-f32")
        if not os.path.exists(b):
            sys.exit(f"{kind} {dt}: FAIL, {b} is missing")
        pa, pb = pq.read_table(a).column("prob").to_pylist(), pq.read_table(b).column("prob").to_pylist()
        if len(pa) != len(pb):
            sys.exit(f"{kind} {dt}: FAIL, {a} has {len(pa)} rows and {b} {len(pb)}")
        rows += len(pa)
        worst = max([worst] + [abs(x - y) for ra, rb in zip(pa, pb) for x, y in zip(ra, rb)])
    # no rows compared is a failure, not a pass
    ok = rows > 0 and worst <= tol
    print(f"{kind} {dt}: max |p_gpu - p_cpu| = {worst:.2e} over {rows} crops (bound {tol})", "ok" if ok else "FAIL")
PY

# 5. precompute against pure teacher inference (resnet152s at 224, 600 JPEGs x 4 crops):
# the goal is >= 0.9x (bench/precompute_vs_infer.sh)
cp "$here/precompute_vs_infer.sh" "$bin/"
for dt in f32 bf16; do
    step 150 bash "$bin/precompute_vs_infer.sh" "$bin" "$out/pvi" "$DEV" "$dt" $PVI
done
MEAL_CUDA_CONV=cudnn step 150 bash "$bin/precompute_vs_infer.sh" "$bin" "$out/pvi" "$DEV" bf16 $PVI
# the crops copied from pageable memory instead of pinned buffers (ops/cuda/pinned.rs)
MEAL_CUDA_PINNED=0 step 150 bash "$bin/precompute_vs_infer.sh" "$bin" "$out/pvi" "$DEV" bf16 $PVI

# 6. two switches of our CUDA path, each against its default timed in step 3: the memory
# pool's release at every synchronisation (the driver's default, MEAL_CUDA_POOL_KEEP=0;
# models/src/device.rs), and one GEMM + a layout swap per chunk for the small planes
# of ResNet's last two stages (MEAL_CUDA_ONE_GEMM_BELOW; ops/cuda/conv.rs `one_gemm`)
MEAL_CUDA_POOL_KEEP=0 step 90 "$bin/models" train resnet50 $TRAIN
MEAL_DTYPE=bf16 MEAL_CUDA_POOL_KEEP=0 step 90 "$bin/models" train resnet50 $TRAIN
for dt in f32 bf16; do
    MEAL_DTYPE=$dt MEAL_CUDA_ONE_GEMM_BELOW=800 step 60 "$bin/models" infer resnet152s $INFER
done
MEAL_DTYPE=bf16 MEAL_CUDA_ONE_GEMM_BELOW=800 step 90 "$bin/models" train resnet50 $TRAIN

# 7. the throughput lines above side by side: each of ours against PyTorch's (and, for the
# train step, against its AMP step), and precompute against inference
step 30 python3 "$here/gpu_summary.py" "$out/gpu_check.log"
rm -rf "$bin"
