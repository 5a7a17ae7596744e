#!/usr/bin/env bash
# make replicate: MEAL V2's claims at small scale on the demo, each row over SEEDS
# student seeds (same pre-training recipe, its own seed per replicate), two runs side by
# side with one thread each. Writes runs/replicate/ and docs/REPLICATION.md + .png.
#
# Rows (the issue "Show MEAL V2's gain"; MEAL V2 paper sections 3-4, FKD's pool question):
#   hard labels vs KD from the ensemble (the headline), KD from each teacher alone,
#   weight decay 0 vs the demo's, random init vs the pre-trained init, discriminator off,
#   top-5 / top-1 labels vs dense, crop pools of 2 / 8 / 32 vs 80, online teachers
#   (fresh crops every step, no store).
set -euo pipefail
# the defaults are the demo's (Makefile), which `make replicate` passes in
BIN=${BIN:-target/release}
OUT=${OUT:-runs/replicate}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
DATA=${DATA:-demo/data}
TDIR=${TDIR:-assets/demo-teachers}
RES=${RES:-64} POOL=${POOL:-80} SCALE=${SCALE:-0.08,1} STUDENT=${STUDENT:-demo_resnet10}
PRE=${PRE:-10} EPOCHS=${EPOCHS:-20} CROPS=${CROPS:-4} BATCH=${BATCH:-32} LR=${LR:-0.02} WD=${WD:-5e-4}
TA="demo_resnet14=$TDIR/teacher_a.safetensors,size=$RES"
TB="demo_resnet10=$TDIR/teacher_b.safetensors,size=$RES"
export MEAL_NO_PROGRESS=1
mkdir -p "$OUT"
T0=$(date +%s)
[ -f "$DATA/synth.json" ] || "$BIN/meal-data" synth --out "$DATA" --train-per-class "${DEMO_PER_CLASS:-40}"

# label stores: the crop pool's seed is fixed (0), as one precompute serves many students
store() { # name, then precompute args
  local name=$1; shift
  [ -f "$OUT/labels/$name/.done" ] && return
  "$BIN/meal-precompute" run --data "$DATA/train" --out "$OUT/labels/$name" --scale "$SCALE" \
    --threads "$JOBS" "$@" > "$OUT/labels/$name.log" 2>&1
  touch "$OUT/labels/$name/.done"
}
mkdir -p "$OUT/labels"
store ens --teacher "$TA" --teacher "$TB" --crops-per-image "$POOL"
store a --teacher "$TA" --crops-per-image "$POOL"
store b --teacher "$TB" --crops-per-image "$POOL"
store top5 --teacher "$TA" --teacher "$TB" --crops-per-image "$POOL" --encoding topk:5
store top1 --teacher "$TA" --teacher "$TB" --crops-per-image "$POOL" --encoding topk:1
for p in 2 8 32; do store "p$p" --teacher "$TA" --teacher "$TB" --crops-per-image $p; done

COMMON="--data $DATA/train --val $DATA/val --res $RES --batch $BATCH --crops-per-image $CROPS --threads 1 --schedule cosine --lr $LR --arch $STUDENT"
job() { # row seed extra-args...  (one training run; skipped when done)
  local row=$1 seed=$2; shift 2
  local dir="$OUT/$row/s$seed"
  [ -f "$dir/.done" ] && return 0
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  "$BIN/meal-student" train $COMMON --seed $((seed * 10 + 1)) --epochs "$EPOCHS" --out "$dir" "$@" \
    > "$dir.log" 2>&1 && touch "$dir/.done"
}
export -f job; export OUT BIN COMMON EPOCHS

# 1. the pre-trained inits (one per seed)
for s in $SEEDS; do
  d="$OUT/pretrain/s$s"
  if [ ! -f "$d/.done" ]; then
    rm -rf "$d"; mkdir -p "$OUT/pretrain"
    echo "$BIN/meal-student train $COMMON --seed $((s * 10)) --epochs $PRE --loss ce --scale $SCALE --wd $WD --out $d > $d.log 2>&1 && touch $d/.done"
  fi
done | xargs -P "$JOBS" -I{} bash -c {} || echo "some pre-trainings failed: $OUT/pretrain/s*.log" >&2

# 2. every row x seed, JOBS at a time
L="$OUT/labels"
for s in $SEEDS; do
  I="--init $OUT/pretrain/s$s/student.safetensors"
  cat <<JOBS
hard $s --loss ce --scale $SCALE --wd $WD $I
kd $s --loss kd --labels $L/ens --wd $WD $I
kd_teacher_a $s --loss kd --labels $L/a --wd $WD $I
kd_teacher_b $s --loss kd --labels $L/b --wd $WD $I
kd_wd0 $s --loss kd --labels $L/ens --wd 0 $I
kd_wd1e-4 $s --loss kd --labels $L/ens --wd 1e-4 $I
kd_random_init $s --loss kd --labels $L/ens --wd $WD
hard_random_init $s --loss ce --scale $SCALE --wd $WD
kd_disc_off $s --loss kd --labels $L/ens --wd $WD --disc off $I
kd_top5 $s --loss kd --labels $L/top5 --wd $WD $I
kd_top1 $s --loss kd --labels $L/top1 --wd $WD $I
kd_pool2 $s --loss kd --labels $L/p2 --wd $WD $I
kd_pool8 $s --loss kd --labels $L/p8 --wd $WD $I
kd_pool32 $s --loss kd --labels $L/p32 --wd $WD $I
kd_online $s --loss kd --online-teacher $TA --online-teacher $TB --scale $SCALE --wd $WD $I
JOBS
done | xargs -P "$JOBS" -I{} bash -c 'job {}' \
  || echo "some runs failed (their rows report fewer seeds): $OUT/ROW/sSEED.log" >&2

T1=$(date +%s)
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q matplotlib
python3 scripts/replication_report.py "$OUT" "$((T1 - T0))" \
  "POOL=$POOL SCALE=$SCALE STUDENT=$STUDENT PRE=$PRE EPOCHS=$EPOCHS CROPS=$CROPS BATCH=$BATCH LR=$LR WD=$WD SEEDS='$SEEDS'"
