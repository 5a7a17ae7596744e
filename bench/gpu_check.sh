#!/usr/bin/env bash
# The device check (README, "The CUDA build"): on a machine with one NVIDIA GPU, a CUDA 13
# driver, Python with PyTorch + timm and the cu13 NVIDIA wheels, no network and no Rust.
# It runs the binaries `make gpu-bundle` packed into bench/out/gpu/ and prints, in this
# order: the GPU and the CUDA libraries found; our binaries opening cuda:0; our CUDA ops
# against their CPU twins (ours, then with cuDNN's convolutions); a tiny precompute +
# train on demo data with --device cuda:0 (two workers on one GPU, mixed precision too),
# and the GPU stores against a CPU store of the same crops; teacher inference
# (resnet152s, senet154 at 224, f32 and bf16) and the ResNet-50 KD train step (TF32, and
# mixed precision), each with our convolutions and with cuDNN's (MEAL_CUDA_CONV=cudnn)
# beside PyTorch (timm, channels_last, autocast) in the same run; precompute at 224
# against the teacher's pure inference speed; two switches of our CUDA path; a summary.
# Every step has its own time limit, cut to what is left of a budget of 390 s (the
# remaining steps are skipped past it), so the whole script ends within 8 minutes (its
# stop-19 version ran in 118-149 s).
#   bash bench/out/gpu/gpu_check.sh   (gpu_check.log and gpu_summary.txt in $OUT, or in
#                                      bench/out/gpu-run; the scratch data is removed)
# Rehearsal on a CPU machine (`make gpu-rehearsal`): GPU_CHECK_DEVICE=cpu runs every step
# with the same binaries and flags on the CPU at tiny sizes, so a broken command line,
# filter or parser shows up here and not in the device's few minutes. The GPU-only steps
# then fail as they must on a CPU (the op tests are listed, not run; --amp and bf16
# training are refused).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../gpu-run}
mkdir -p "$out"
# only the log and the summary go to $out (the device tool brings back at most 8 files
# from $OUT); the data, stores and runs go to a scratch folder, fresh each run (the
# binaries rightly refuse to train into a finished run's folder) and removed at the end
work=$(mktemp -d)
exec > >(tee "$out/gpu_check.log") 2>&1
if ! ls "$here"/*.xz >/dev/null 2>&1; then
    echo "no binaries beside $0: run \`make gpu-bundle\` here, then bench/out/gpu/gpu_check.sh (carry bench/out/gpu to the device)"
    exit 2
fi
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
# the libraries our binaries open at run time, found or not (candle opens cuBLAS and
# cuRAND with every CUDA device; cuDNN under MEAL_CUDA_CONV=cudnn)
for l in libcublas.so libcublasLt.so libcurand.so libcudnn.so; do
    f=$(IFS=:; for d in $LD_LIBRARY_PATH; do ls "$d"/$l.* 2>/dev/null; done | head -1)
    [ -n "$f" ] || f=$(ldconfig -p 2>/dev/null | grep -m1 " $l\." | sed 's/.*=> //')
    echo "library $l: ${f:-MISSING}"
done
export MEAL_NO_PROGRESS=1 RAYON_NUM_THREADS=$(nproc)
DEV=${GPU_CHECK_DEVICE:-cuda:0}
if [ "$DEV" = cpu ]; then
    # args: network res batch iters, per step kind; the op tests listed (GPU-only)
    INFER="64 4 1" SE="64 2 1" TRAIN="64 4 1" OPS="2 1" PROF="64 2 1" PVI="2 1 4" LISTED=""
else
    INFER="224 64 10" SE="224 64 5" TRAIN="224 32 5" OPS="32 10" PROF="224 32 3" PVI="60 4 64" LISTED="--ignored"
fi
# each step's heading names the settings it runs under (dtype, cuDNN, profile). Past
# GPU_CHECK_BUDGET seconds (default 390, so that the script ends within 8 minutes: the
# device lends 15, start-up included, and a rerun needs some) the remaining steps are
# skipped, and the summary still runs. The correctness steps come first.
budget=${GPU_CHECK_BUDGET:-390}
fatal=""
step() {
    local limit=$1; shift
    echo; echo "## $(env | grep -E '^MEAL_(DEVICE|DTYPE|CUDA_CONV|CUDA_FUSED|CUDA_OPS|CUDA_PINNED|CUDA_POOL_KEEP|CUDA_ONE_GEMM_BELOW|OP_PROFILE)=' | sort | tr '\n' ' ')$*"
    local summary=0
    case " $* " in *"/gpu_summary.py "*) summary=1 ;; esac
    if [ -n "$fatal" ] && [ "$summary" = 0 ]; then echo "(skipped: $fatal)"; return 1; fi
    if [ "$SECONDS" -ge "$budget" ] && [ "$summary" = 0 ]; then
        echo "(skipped: ${SECONDS}s spent of the ${budget}s budget)"; return 1
    fi
    [ "$limit" -gt $((budget + 60 - SECONDS)) ] && limit=$((budget + 60 - SECONDS))
    [ "$limit" -lt 10 ] && limit=10
    timeout -k 10 "$limit" "$@"; local rc=$?; echo "(exit $rc)"; return $rc
}

echo "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"

# 1. one binary for CPU and GPU: the cuda build opens cuda:0 here (a tiny forward); if it
# cannot, every later step would fail the same way: they are skipped, the summary runs
MEAL_DEVICE=$DEV step 60 "$bin/models" infer demo_tiny 32 2 1 ||
    fatal="the binaries could not run on $DEV (the first step's error above)"
step 60 "$bin/meal-data" synth --out "$work/data" --train-per-class 20 --val-per-class 5

# 2. every CUDA op against its CPU twin (models/src/ops/cuda/tests/; ignored off a GPU)
step 120 "$bin/meal_ops_tests" $LISTED --test-threads 1 ops::cuda
# the convolutions through cuDNN instead of ours (MEAL_CUDA_CONV=cudnn, ops/cuda/cudnn.rs),
# and frozen teachers' fused NHWC forward through cuDNN (resnet/fused.rs, ops/cuda/nhwc.rs)
MEAL_CUDA_CONV=cudnn step 90 "$bin/meal_ops_tests" $LISTED --test-threads 1 --show-output conv frozen mixed fused
# the one-GEMM layout switch of step 6 (every one-group forward through it)
MEAL_CUDA_ONE_GEMM_BELOW=1000000000 step 60 "$bin/meal_ops_tests" $LISTED --test-threads 1 conv

# 3. the pipeline on the GPU (before the timings, which the budget may cut): teacher,
# precompute (bf16 and f32), a KD student
S="$bin/meal-student"; P="$bin/meal-precompute"; D="$work/data"
step 90 "$S" train --data "$D/train" --val "$D/val" --arch demo_resnet10 --res 32 --epochs 2 \
    --batch 32 --crops-per-image 2 --loss ce --lr 0.05 --device "$DEV" --out "$work/teacher"
# (labels-ref-f32, made on the CPU, is the f32 reference of both GPU stores)
# (labels-fused-*: the teacher's fused NHWC forward through cuDNN)
for run in dev/bf16 dev/f32 ref/f32 fused/bf16 fused/f32; do
    dev=$DEV; [ "${run%/*}" = ref ] && dev=cpu
    conv=ours; [ "${run%/*}" = fused ] && conv=cudnn
    dt=${run#*/}
    MEAL_CUDA_CONV=$conv step 90 "$P" run --data "$D/train" \
        --teacher "demo_resnet10=$work/teacher/student.safetensors,size=32" \
        --crops-per-image 4 --device "$dev" --dtype "$dt" --out "$work/labels-${run%/*}-$dt"
done
step 60 "$P" verify "$work/labels-dev-bf16"
# one worker per device, here twice the same GPU: the merge path on CUDA (shards of 50
# images, so that each worker writes some)
step 90 "$P" run --data "$D/train" --teacher "demo_resnet10=$work/teacher/student.safetensors,size=32" \
    --crops-per-image 4 --samples-per-shard 50 --device "$DEV,$DEV" --dtype f32 --out "$work/labels-2dev"
step 60 "$P" verify "$work/labels-2dev"
step 120 "$S" train --data "$D/train" --val "$D/val" --labels "$work/labels-dev-bf16" --arch demo_tiny \
    --res 32 --epochs 2 --batch 32 --crops-per-image 2 --lr 0.05 --device "$DEV" --out "$work/kd"
# the same KD student under mixed precision (--amp true)
step 120 "$S" train --data "$D/train" --val "$D/val" --labels "$work/labels-dev-bf16" --arch demo_tiny \
    --res 32 --epochs 2 --batch 32 --crops-per-image 2 --lr 0.05 --device "$DEV" --amp true \
    --out "$work/kd-amp"
# a batch that cannot fit the GPU's free memory (demo_tiny at 4096 px: ~2.6 GB a crop;
# 4000 crops, 20 of each of the 200 images) is refused before it is tried, naming the
# flags (on the CPU: the host's memory)
step 60 bash -c 'if "$1" train --data "$2/train" --arch demo_tiny --res 4096 --batch 4000 --epochs 1 \
    --crops-per-image 20 --loss ce --device "$3" --out "$4/refused" 2> "$4/refused.err"
    then echo "not refused"; exit 1; fi
    cat "$4/refused.err"; grep -q "lower --batch or --res" "$4/refused.err" &&
    { [ "$3" = cpu ] || grep -q "free on the GPU" "$4/refused.err"; }' _ "$S" "$D" "$DEV" "$work"
# the GPU stores against the CPU f32 store of the same crops (f32: float rounding only),
# matched by sample and crop
step 60 python3 - "$work" <<'PY'
import sys
try:
    import pyarrow.parquet as pq
except ImportError:
    sys.exit("store comparison skipped: no pyarrow here")
import glob
o = sys.argv[1]

def rows(store):
    """(sample_id, crop_id) -> probabilities, over every shard of the store, and how many
    rows there were (a repeated key is a damaged store)."""
    out, n = {}, 0
    for f in sorted(glob.glob(f"{o}/{store}/shard-*.parquet")):
        t = pq.read_table(f, columns=["sample_id", "crop_id", "prob"]).to_pydict()
        out.update(zip(zip(t["sample_id"], t["crop_id"]), t["prob"]))
        n += len(t["prob"])
    return out, n

def gap(a, b):
    """max |a - b|, inf where the lengths differ or a value is NaN (max() would skip it)."""
    if len(a) != len(b):
        return float("inf")
    d = [abs(x - y) for x, y in zip(a, b)]
    return float("inf") if any(v != v for v in d) else max(d, default=0.0)

ref, nref = rows("labels-ref-f32")
failed = nref != len(ref) or not ref
for store, tol in (("labels-dev-f32", 1e-3), ("labels-dev-bf16", 5e-2), ("labels-fused-f32", 1e-3),
                   ("labels-fused-bf16", 5e-2), ("labels-2dev", 1e-3)):
    got, n = rows(store)
    worst = max((gap(p, ref[k]) for k, p in got.items() if k in ref), default=0.0)
    # no rows, repeated rows, or rows the reference lacks (or lacks of it): a failure
    ok = bool(got) and n == len(got) and got.keys() == ref.keys() and worst <= tol
    failed |= not ok
    print(f"{store}: max |p - p_cpu_f32| = {worst:.2e} over {len(got)} crops of {len(ref)} "
          f"(bound {tol})", "ok" if ok else "FAIL")
sys.exit(1 if failed else 0)
PY

# 4. throughput beside PyTorch on the same GPU (MEAL_DEVICE / MEAL_DTYPE, bench/models_torch.py)
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

# 5. precompute against pure teacher inference (resnet152s at 224, 600 JPEGs x 4 crops):
# the goal is >= 0.9x (bench/precompute_vs_infer.sh)
cp "$here/precompute_vs_infer.sh" "$bin/"
for dt in f32 bf16; do
    step 150 bash "$bin/precompute_vs_infer.sh" "$bin" "$work/pvi" "$DEV" "$dt" $PVI
done
MEAL_CUDA_CONV=cudnn step 150 bash "$bin/precompute_vs_infer.sh" "$bin" "$work/pvi" "$DEV" bf16 $PVI
# the crops copied from pageable memory instead of pinned buffers (ops/cuda/pinned.rs)
MEAL_CUDA_PINNED=0 step 150 bash "$bin/precompute_vs_infer.sh" "$bin" "$work/pvi" "$DEV" bf16 $PVI

# 6. two switches of our CUDA path, each against its default timed in step 4: the memory
# pool's release at every synchronisation (the driver's default, MEAL_CUDA_POOL_KEEP=0;
# models/src/device.rs), and one GEMM + a layout swap per chunk for the small planes
# of ResNet's last two stages, 14x14 and 7x7 (MEAL_CUDA_ONE_GEMM_BELOW=200; ops/cuda/conv.rs
# `one_gemm`; its correctness is checked in step 2)
MEAL_CUDA_POOL_KEEP=0 step 90 "$bin/models" train resnet50 $TRAIN
MEAL_DTYPE=bf16 MEAL_CUDA_POOL_KEEP=0 step 90 "$bin/models" train resnet50 $TRAIN
for dt in f32 bf16; do
    MEAL_DTYPE=$dt MEAL_CUDA_ONE_GEMM_BELOW=200 step 60 "$bin/models" infer resnet152s $INFER
done
MEAL_DTYPE=bf16 MEAL_CUDA_ONE_GEMM_BELOW=200 step 90 "$bin/models" train resnet50 $TRAIN

# 7. the throughput lines above side by side: each of ours against PyTorch's (and, for the
# train step, against its AMP step), and precompute against inference
step 30 python3 "$here/gpu_summary.py" "$out/gpu_check.log" | tee "$out/gpu_summary.txt"
rm -rf "$bin" "$work"
