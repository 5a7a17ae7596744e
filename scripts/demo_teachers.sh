#!/usr/bin/env bash
# make teachers: retrain the demo's two teachers exactly as the shipped ones were made
# and compare them with assets/demo-teachers (every tensor's bytes and val top-1).
#
# The shipped files came from these commands on a 2-core AMD EPYC (AVX-512) machine,
# the two trainings side by side with one thread each (~6 min). Training is
# deterministic for a given thread count and CPU kind; another CPU (AVX2 only) may round
# differently and give other bytes, so the accuracy is the check that matters
# (tests/tests/demo_teachers.rs checks the shipped files' accuracy).
set -euo pipefail
BIN=$1 DATA=$2 OUT=$3 SHIPPED=$4
export MEAL_NO_PROGRESS=${MEAL_NO_PROGRESS:-1}
[ -f "$DATA/synth.json" ] || "$BIN/meal-data" synth --out "$DATA" --train-per-class 160
mkdir -p "$OUT"
teacher() { # name arch seed
  "$BIN/meal-student" train --data "$DATA/train" --val "$DATA/val" --res 64 --batch 32 \
    --crops-per-image 2 --threads 1 --schedule cosine --loss ce --lr 0.02 --wd 5e-4 \
    --scale 0.35,1 --epochs 30 --arch "$2" --seed "$3" --out "$OUT/$1" \
    $([ -d "$OUT/$1/checkpoint" ] && echo --resume) > "$OUT/$1.log" 2>&1
}
[ -f "$OUT/teacher_a/student.safetensors" ] && grep -q '"epoch":29' "$OUT/teacher_a/metrics.jsonl" 2>/dev/null \
  || teacher teacher_a demo_resnet14 1 &
[ -f "$OUT/teacher_b/student.safetensors" ] && grep -q '"epoch":29' "$OUT/teacher_b/metrics.jsonl" 2>/dev/null \
  || teacher teacher_b demo_resnet10 2 &
wait
# The tensors are compared, not the files: a student.safetensors written today also
# records what it was trained on in the header's __metadata__ (meal.trained_on), which
# the shipped files, made before that existed, lack.
tensors() { # the safetensors file's tensor table and data, without __metadata__
  python3 - "$1" <<'PY'
import hashlib, json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
head = json.loads(b[8:8 + n]); head.pop("__metadata__", None)
print(hashlib.sha256(json.dumps(head, sort_keys=True).encode() + b[8 + n:]).hexdigest())
PY
}
for t in teacher_a teacher_b; do
  arch=$([ $t = teacher_a ] && echo demo_resnet14 || echo demo_resnet10)
  new=$(tensors "$OUT/$t/student.safetensors")
  old=$(tensors "$SHIPPED/$t.safetensors")
  acc() { "$BIN/meal-student" eval --data "$DATA/val" --res 64 --threads 2 --arch "$arch" --weights "$1" 2>/dev/null | tail -1 | sed 's/.*top-1 \([0-9.]*\).*/\1/'; }
  echo "$t ($arch): retrained val top-1 $(acc "$OUT/$t/student.safetensors"), shipped $(acc "$SHIPPED/$t.safetensors"); tensors $([ "$new" = "$old" ] && echo identical || echo "differ")"
done
