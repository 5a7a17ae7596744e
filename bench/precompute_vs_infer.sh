#!/usr/bin/env bash
# Precompute against pure teacher inference on one device (the GPU issue's goal: the
# labelling loop at >= 90% of the teacher's own forward speed). Synthetic JPEGs of
# 256-500 px, one resnet152s teacher at 224 (random weights from timm, so PyTorch + timm
# are needed to make them), then in one run:
#   - `meal-precompute run`: decode, RandomResizedCrop, 8-bit crops copied to the device
#     and normalised there, the forward, softmax, shards; its "labelling loop" figure
#     leaves out set-up (opening data, loading the teacher) and the bf16 dtype check;
#   - `models infer resnet152s 224 BATCH`: the forward alone on a device-resident batch.
# Usage: bash bench/precompute_vs_infer.sh BIN_DIR OUT DEVICE DTYPE [PER_CLASS] [CROPS] [BATCH]
#   BIN_DIR holds meal-data, meal-precompute and the models bench as `models`
#   (bench/gpu_check.sh passes its unpacked bundle); PER_CLASS images per class (10
#   classes), CROPS crops per image, BATCH crops per forward.
set -uo pipefail
bin=$1 out=$2 dev=$3 dt=$4 per_class=${5:-60} crops=${6:-4} batch=${7:-64}
mkdir -p "$out"
data=$out/data224 weights=$out/resnet152s-10.safetensors
[ -d "$data/train" ] || "$bin/meal-data" synth --out "$data" --train-per-class "$per_class" \
    --val-per-class 1 --min-side 256 --max-side 500 >/dev/null || exit 1
if [ ! -f "$weights" ]; then
    python3 - "$weights" <<'PY' || { echo "failed: the teacher's weights need torch, timm and safetensors"; exit 1; }
import sys, torch, timm
from safetensors.torch import save_file
torch.manual_seed(0)
m = timm.create_model("resnet152s", num_classes=10).eval()
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, sys.argv[1])
PY
fi
threads=$(nproc)
rm -rf "$out/labels-$dt"
pre=$(RAYON_NUM_THREADS=$threads "$bin/meal-precompute" run --data "$data/train" \
    --teacher "resnet152s=$weights" --crops-per-image "$crops" --batch "$batch" \
    --threads "$threads" --device "$dev" --dtype "$dt" --out "$out/labels-$dt" 2>&1)
echo "$pre" | grep -E "this run|labelling loop" || { echo "$pre" | tail -5; exit 1; }
inf=$(MEAL_DEVICE=$dev MEAL_DTYPE=$dt RAYON_NUM_THREADS=$threads "$bin/models" infer resnet152s 224 "$batch" 5 2>&1)
# (prefixed: gpu_summary.py tables the models bench's own lines, not this repeat)
echo "$inf" | grep -E "^ours" | sed 's/^/pvi: /' | grep . || { echo "$inf" | tail -5; exit 1; }
# the crops' copy to a GPU: from pinned buffers unless MEAL_CUDA_PINNED=0 (ops/cuda/pinned.rs)
pinned=$([ "${MEAL_CUDA_PINNED:-1}" = 0 ] && echo pageable || echo pinned)
[ "$dev" = cpu ] && pinned="none (CPU)"
p=$(echo "$pre" | sed -n 's/.*labelling loop.* \([0-9.]*\) crops\/s.*/\1/p')
i=$(echo "$inf" | sed -n 's/^ours.*: \([0-9.]*\) img\/s.*/\1/p')
python3 -c "print(f'precompute / pure inference ($dev, $dt, batch $batch, $threads CPU threads, convolutions: ${MEAL_CUDA_CONV:-ours}, crops copy: ${pinned}): {$p:.1f} / {$i:.1f} img/s = {$p / $i:.2f}x (goal 0.90x)')"
