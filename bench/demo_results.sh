#!/usr/bin/env bash
# The demo's results table (make eval): top-1 / top-5 on the val split of each teacher,
# their ensemble, the pre-trained student, the hard-label and the distilled student,
# and the distillation gain (KD minus hard labels, same init, epochs, crops and seed).
set -euo pipefail
BIN=$1 VAL=$2 RUNS=$3 RES=$4 THREADS=$5 TA=$6 TB=$7 ST=$8 TDIR=$9
# every input first: a missing one is named (make train makes them), not a silent exit
for f in "$TDIR/teacher_a.safetensors" "$TDIR/teacher_b.safetensors"; do
  [ -f "$f" ] || { echo "make eval: the teacher $f is missing (shipped in assets/demo-teachers; make teachers retrains them)" >&2; exit 1; }
done
for f in "$RUNS/pretrain/student.safetensors" "$RUNS/baseline/student.safetensors" \
    "$RUNS/kd/student.safetensors"; do
  [ -f "$f" ] || { echo "make eval: $f is missing: run make train first (it makes every run)" >&2; exit 1; }
done
[ -d "$VAL" ] || { echo "make eval: $VAL is missing: run make demo-data (or make train)" >&2; exit 1; }
top() { # meal-student eval args -> its JSON (its summary line and log kept; shown on error)
  local log rc=0; log=$(mktemp)
  RUST_LOG=${RUST_LOG:-warn} "$BIN" eval --data "$VAL" --threads "$THREADS" --json "$@" 2>"$log" || rc=$?
  [ $rc -eq 0 ] || cat "$log" >&2
  rm -f "$log"; return $rc
}
row() { # name, json
  python3 -c "import json,sys; a=json.loads(sys.argv[2]); print(f'| {sys.argv[1]} | {a[\"top1\"]*100:.1f} | {a[\"top5\"]*100:.1f} |')" "$1" "$2"
}
A=$(top --res "$RES" --arch "$TA" --weights "$TDIR/teacher_a.safetensors")
B=$(top --res "$RES" --arch "$TB" --weights "$TDIR/teacher_b.safetensors")
E=$(top --teacher "$TA=$TDIR/teacher_a.safetensors,size=$RES" --teacher "$TB=$TDIR/teacher_b.safetensors,size=$RES")
P=$(top --res "$RES" --arch "$ST" --weights "$RUNS/pretrain/student.safetensors")
H=$(top --res "$RES" --arch "$ST" --weights "$RUNS/baseline/student.safetensors")
K=$(top --res "$RES" --arch "$ST" --weights "$RUNS/kd/student.safetensors")
{
  echo "| model (demo val, $RES px) | top-1 % | top-5 % |"
  echo "|---|---|---|"
  row "teacher A ($TA, shipped)" "$A"
  row "teacher B ($TB, shipped)" "$B"
  row "ensemble A+B (mean softmax)" "$E"
  row "student $ST, hard-label pre-training (the init)" "$P"
  row "student $ST, + hard labels" "$H"
  row "student $ST, + MEAL V2 KD" "$K"
  python3 -c "import json,sys; h=json.loads(sys.argv[1])['top1']; k=json.loads(sys.argv[2])['top1']; print(f'\nDistillation gain (KD - hard labels, same init, epochs, crops and seed): {100*(k-h):+.1f} points top-1. Seed spread: docs/REPLICATION.md (make replicate).')" "$H" "$K"
} | tee "$RUNS/results.md"
