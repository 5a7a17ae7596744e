# The user's entry points. `make test` is exactly what CI runs (.ci/run).
CARGO ?= cargo
DEMO  ?= demo
DATA  ?= $(DEMO)/data
THREADS ?= 2

.PHONY: all build test test-full pydeps fmt-check clippy unit vendor-check build-cuda check-cuda clippy-cuda gpu-bundle gpu-rehearsal demo-data bench bench-models bench-store bench-gemm bench-bf16 teachers precompute train eval clean
FULL_FIXTURES ?= /tmp/meal-full-fixtures

all: build

build:
	$(CARGO) build --release --workspace

## test: formatting, lints and every test (tests are built optimised: [profile.test]).
## The label-store test reads shards with pyarrow, DuckDB and Polars: pydeps installs them.
test: fmt-check clippy vendor-check pydeps unit

pydeps:
	@python3 -c "import pyarrow, duckdb, polars, numpy" 2>/dev/null || python3 -m pip install -q pyarrow duckdb polars numpy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

## vendor-check: vendor/candle-core equals the crates.io release plus vendor/candle-core.patch
vendor-check:
	bash vendor/check.sh

## ---- the CUDA build (no GPU needed to compile; scripts/cuda-toolchain.sh) ----
## build-cuda: release binaries with --features cuda in target/cuda (CUDA 13.0 toolchain
## from PyPI wheels into .cuda-pip/). One binary for CPU and GPU: it starts without a
## driver and opens the NVIDIA libraries only when --device cuda:N is asked for.
CUDA_TARGET ?= target/cuda
CUDA_ENV = eval "$$(bash scripts/cuda-toolchain.sh)" && export CARGO_TARGET_DIR=$(CUDA_TARGET)
build-cuda:
	$(CUDA_ENV) && $(CARGO) build --release --features cuda -p meal-precompute -p meal-student

## gpu-bundle: the stripped, compressed cuda binaries + bench/gpu_check.sh in bench/out/gpu/,
## ready for the device machine (no Rust there): bash bench/out/gpu/gpu_check.sh
gpu-bundle:
	bash bench/gpu_bundle.sh

## gpu-rehearsal: the device check's every step run here on the CPU at tiny sizes with the
## bundle's binaries (log in bench/out/gpu-rehearsal/): catches a broken step before a GPU
gpu-rehearsal: gpu-bundle
	GPU_CHECK_DEVICE=cpu OUT=$(CURDIR)/bench/out/gpu-rehearsal bash bench/out/gpu/gpu_check.sh

## check-cuda: what CI runs after `make test` - the workspace builds with the cuda feature
## and its whole test suite passes on this GPU-less machine (the device test: CPU works,
## cuda:0 is an error naming libcuda.so.1; the GPU-only op tests are reported ignored).
## Same target dir as `make test`: only candle, the CUDA kernels (nvcc) and our crates
## are rebuilt. clippy-cuda is the lint of the same build
## (not in CI: it runs nvcc over candle's kernels a second time, ~10 min on 2 cores).
CUDA_CHECK_ENV = eval "$$(bash scripts/cuda-toolchain.sh)"
check-cuda:
	$(CUDA_CHECK_ENV) && $(CARGO) test --workspace --features meal-models/cuda

clippy-cuda:
	$(CUDA_CHECK_ENV) && $(CARGO) clippy --workspace --features meal-models/cuda -- -D warnings

## test-full: the opt-in checks - full-size presets and a save/load round trip through
## timm (needs python3 with torch, timm, safetensors; writes ~2 GB to $(FULL_FIXTURES))
test-full:
	python3 models/tests/fixtures/make_model_fixtures.py --full $(FULL_FIXTURES)
	MEAL_FULL_FIXTURES=$(FULL_FIXTURES) $(CARGO) test --workspace -- --ignored


## bench: input-pipeline throughput, ours beside PIL + torchvision (BENCHMARKS.md)
bench:
	bash bench/data_pipeline.sh

## bench-store: label-store bytes per crop and read speed
bench-store:
	$(CARGO) bench -p meal-store --bench store

## bench-gemm: the GEMM under our convolutions (gemm crate) beside torch.mm, 1 and 2 threads
bench-gemm:
	for t in 1 2; do RAYON_NUM_THREADS=$$t $(CARGO) bench -q -p meal-models --bench gemm; \
	  python3 bench/gemm_torch.py $$t || echo "torch side skipped: pip install torch"; done

## bench-bf16: CPU teacher inference in f32 and bf16 (AVX512-BF16), ours beside PyTorch autocast
bench-bf16:
	bash bench/bf16_cpu.sh

## bench-models: teacher inference and student train step, ours beside PyTorch (slow)
bench-models:
	bash bench/models.sh

## ---- the demo: shipped teachers -> make precompute -> make train -> make eval ----
## The teachers come trained (assets/demo-teachers, as real users bring pretrained
## teachers); `make teachers` retrains them and checks the result against the shipped
## files. The student trains on DEMO_PER_CLASS images per class of the same generator.
## Every stage is resumable: rerunning a target continues an interrupted run
## (--resume / the store's resume) and skips finished ones (.done markers).
RUNS    ?= runs
RES     ?= 64
DEMO_PER_CLASS ?= 40
POOL    ?= 80
SCALE   ?= 0.08,1
TEACHER_A ?= demo_resnet14
TEACHER_B ?= demo_resnet10
TEACHERS_DIR ?= assets/demo-teachers
STUDENT ?= demo_resnet10
PRE_EPOCHS ?= 10
KD_EPOCHS ?= 20
CROPS   ?= 4
BATCH   ?= 32
LR      ?= 0.02
WD      ?= 5e-4
LABELS  ?= $(RUNS)/labels
TEACHERS ?= $(TEACHER_A)=$(TEACHERS_DIR)/teacher_a.safetensors,size=$(RES) $(TEACHER_B)=$(TEACHERS_DIR)/teacher_b.safetensors,size=$(RES)
BIN     := target/release
STUDENT_BIN := $(BIN)/meal-student
PRECOMPUTE_BIN := $(BIN)/meal-precompute
COMMON  = --data $(DATA)/train --val $(DATA)/val --res $(RES) --batch $(BATCH) --crops-per-image $(CROPS) \
  --threads $(THREADS) --schedule cosine --lr $(LR) --wd $(WD) --arch $(STUDENT)
resume  = $(if $(wildcard $(1)/checkpoint),--resume)

.PHONY: release baseline replicate recipe-check clean-runs
release:
	$(CARGO) build --release -p meal-data-cli -p meal-precompute -p meal-student

## the recipe each stage was made with (its recipe.txt, written when it finishes): a
## changed variable is refused by name, naming the stages to redo, where the finished
## stages' .done markers would silently keep the old results (THREADS is in none:
## results do not depend on it). Each holds what its output depends on.
PRE_RECIPE = "DATA=$(DATA)" "DEMO_PER_CLASS=$(DEMO_PER_CLASS)" "RES=$(RES)" \
	  "STUDENT=$(STUDENT)" "PRE_EPOCHS=$(PRE_EPOCHS)" "CROPS=$(CROPS)" "BATCH=$(BATCH)" \
	  "LR=$(LR)" "WD=$(WD)" "SCALE=$(SCALE)"
BASE_RECIPE = $(PRE_RECIPE) "KD_EPOCHS=$(KD_EPOCHS)"
LABELS_RECIPE = "DATA=$(DATA)" "DEMO_PER_CLASS=$(DEMO_PER_CLASS)" "POOL=$(POOL)" \
	  "SCALE=$(SCALE)" "TEACHERS=$(TEACHERS)"
KD_RECIPE = $(BASE_RECIPE) "POOL=$(POOL)" "TEACHERS=$(TEACHERS)" "LABELS=$(LABELS)"
## recipe_guard: the shell that checks the named stages' recipes (of pretrain, baseline,
## labels, kd), each target only those it reads or makes: `make baseline POOL=40` is
## not refused over labels made with POOL=80, which it does not read
STAGE_pretrain = $(RUNS)/pretrain $(PRE_RECIPE)
STAGE_baseline = $(RUNS)/baseline $(BASE_RECIPE)
STAGE_labels = $(LABELS) $(LABELS_RECIPE)
STAGE_kd = $(RUNS)/kd $(KD_RECIPE)
define recipe_guard
	@if [ -f $(DATA)/synth.json ] && ! python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["config"]["train_per_class"] != int(sys.argv[2]))' $(DATA)/synth.json $(DEMO_PER_CLASS); then \
	  echo "error: $(DATA) was made with another DEMO_PER_CLASS ($(DATA)/synth.json); use a fresh DEMO=DIR" >&2; exit 2; fi
	@rc=0; \
	  $(foreach st,$(1),bash scripts/recipe_check.sh check $(STAGE_$(st)) || rc=2;) \
	  if [ $$rc != 0 ]; then \
	    echo "  to redo those stages remove them (rm -rf DIR), or use a fresh RUNS=DIR (and LABELS=DIR" >&2; \
	    echo "  where LABELS is outside RUNS), or remove the demo's runs and labels: make clean-runs" >&2; fi; \
	  exit $$rc
endef
## recipe-check: every stage; recipe-check-STAGE: what that stage reads and makes
.PHONY: recipe-check-pretrain recipe-check-baseline recipe-check-labels recipe-check-kd
recipe-check:
	$(call recipe_guard,pretrain baseline labels kd)
recipe-check-pretrain:
	$(call recipe_guard,pretrain)
recipe-check-baseline:
	$(call recipe_guard,pretrain baseline)
recipe-check-labels:
	$(call recipe_guard,labels)
recipe-check-kd:
	$(call recipe_guard,pretrain baseline labels kd)

## clean-runs: remove the demo's runs (RUNS) and its labels (LABELS, also outside RUNS
## when a finished `make precompute` made them), keeping the build and the demo data
clean-runs:
	rm -rf $(RUNS)
	@if [ -f $(LABELS)/recipe.txt ]; then echo "rm -rf $(LABELS)"; rm -rf $(LABELS); fi

## demo-data: the student's demo dataset (DEMO_PER_CLASS train + 50 val images per class)
demo-data: $(DATA)/synth.json

$(DATA)/synth.json: | release
	$(BIN)/meal-data synth --out $(DATA) --train-per-class $(DEMO_PER_CLASS)

## teachers: retrain the two shipped teachers (160 images per class, ~6 min on 2 cores)
## into $(RUNS)/teachers and compare them with assets/demo-teachers (every tensor's bytes, val top-1)
teachers: | release
	bash scripts/demo_teachers.sh $(BIN) $(DEMO)/teacher-data $(RUNS)/teachers $(TEACHERS_DIR)

## precompute: the shipped teachers' ensemble over a pool of POOL crops per image -> LABELS
precompute: recipe-check-labels $(LABELS)/.done

$(LABELS)/.done: | release demo-data recipe-check-labels
	$(PRECOMPUTE_BIN) run --data $(DATA)/train $(addprefix --teacher ,$(TEACHERS)) \
	  --out $(LABELS) --crops-per-image $(POOL) --scale $(SCALE) --threads $(THREADS)
	$(PRECOMPUTE_BIN) verify $(LABELS)
	@bash scripts/recipe_check.sh record $(LABELS) $(LABELS_RECIPE)
	touch $@

## the student's hard-label pre-training (MEAL V2 starts from a pretrained student),
## then the same student trained KD_EPOCHS more on hard labels (the comparison row)
$(RUNS)/pretrain/.done: | release demo-data recipe-check-pretrain
	$(STUDENT_BIN) train $(COMMON) --loss ce --scale $(SCALE) --epochs $(PRE_EPOCHS) \
	  --seed 3 --out $(RUNS)/pretrain $(call resume,$(RUNS)/pretrain)
	@bash scripts/recipe_check.sh record $(RUNS)/pretrain $(PRE_RECIPE)
	touch $@

$(RUNS)/baseline/.done: $(RUNS)/pretrain/.done | recipe-check-baseline
	$(STUDENT_BIN) train $(COMMON) --loss ce --scale $(SCALE) --epochs $(KD_EPOCHS) \
	  --seed 4 --init $(RUNS)/pretrain/student.safetensors \
	  --out $(RUNS)/baseline $(call resume,$(RUNS)/baseline)
	@bash scripts/recipe_check.sh record $(RUNS)/baseline $(BASE_RECIPE)
	touch $@

baseline: recipe-check-baseline $(RUNS)/baseline/.done

## train: MEAL V2 distillation of the student from LABELS (runs the whole chain)
train: recipe-check-kd $(RUNS)/kd/.done
	@$(MAKE) --no-print-directory eval

$(RUNS)/kd/.done: $(LABELS)/.done $(RUNS)/pretrain/.done $(RUNS)/baseline/.done | recipe-check-kd
	$(STUDENT_BIN) train $(COMMON) --loss kd --labels $(LABELS) --epochs $(KD_EPOCHS) \
	  --seed 4 --init $(RUNS)/pretrain/student.safetensors \
	  --out $(RUNS)/kd $(call resume,$(RUNS)/kd)
	@bash scripts/recipe_check.sh record $(RUNS)/kd $(KD_RECIPE)
	touch $@

## eval: top-1 on the demo val split of each teacher, the ensemble, the pre-trained,
## the hard-label and the distilled student -> $(RUNS)/results.md
eval: | release recipe-check
	@bash bench/demo_results.sh "$(STUDENT_BIN)" "$(DATA)/val" "$(RUNS)" "$(RES)" "$(THREADS)" \
	  "$(TEACHER_A)" "$(TEACHER_B)" "$(STUDENT)" "$(TEACHERS_DIR)"

## replicate: the paper's claims at small scale over several seeds -> docs/REPLICATION.md
## (tens of minutes on 2 cores; not part of test or train)
## (the demo's recipe, passed from the variables above: one place to change it)
replicate: | release
	BIN=$(BIN) DATA=$(DATA) TDIR=$(TEACHERS_DIR) RES=$(RES) POOL=$(POOL) SCALE=$(SCALE) \
	  STUDENT=$(STUDENT) PRE=$(PRE_EPOCHS) EPOCHS=$(KD_EPOCHS) CROPS=$(CROPS) \
	  BATCH=$(BATCH) LR=$(LR) WD=$(WD) DEMO_PER_CLASS=$(DEMO_PER_CLASS) bash scripts/replicate.sh

clean:
	$(CARGO) clean
	rm -rf $(DEMO) $(RUNS) bench/out .cuda-pip
