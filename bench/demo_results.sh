#!/usr/bin/env bash
# The demo's results table (make eval): top-1 / top-5 on the val split of each teacher,
# their ensemble, the hard-label student and the distilled student.
set -euo pipefail
BIN=$1 VAL=$2 RUNS=$3 RES=$4 THREADS=$5 TA=$6 TB=$7 ST=$8
row() { # name, then meal-student eval args
  local name=$1; shift
  local out
  out=$("$BIN" eval --data "$VAL" --res "$RES" --threads "$THREADS" --json "$@" 2>/dev/null | tail -1)
  python3 -c "import json,sys; a=json.loads(sys.argv[2]); print(f'| {sys.argv[1]} | {a[\"top1\"]*100:.1f} | {a[\"top5\"]*100:.1f} |')" "$name" "$out"
}
{
  echo "| model (demo val, $RES px) | top-1 % | top-5 % |"
  echo "|---|---|---|"
  row "teacher A ($TA, hard labels)" --arch "$TA" --weights "$RUNS/teacher_a/student.safetensors"
  row "teacher B ($TB, hard labels)" --arch "$TB" --weights "$RUNS/teacher_b/student.safetensors"
  row "ensemble A+B (mean softmax)" --teacher "$TA=$RUNS/teacher_a/student.safetensors,size=$RES" --teacher "$TB=$RUNS/teacher_b/student.safetensors,size=$RES"
  row "student $ST, hard labels" --arch "$ST" --weights "$RUNS/baseline/student.safetensors"
  row "student $ST, MEAL V2 KD" --arch "$ST" --weights "$RUNS/kd/student.safetensors"
} | tee "$RUNS/results.md"
