# The user's entry points. `make test` is exactly what CI runs (.ci/run).
CARGO ?= cargo
DEMO  ?= demo
DATA  ?= $(DEMO)/data
THREADS ?= 2

.PHONY: all build test test-full pydeps fmt-check clippy unit demo-data bench bench-models bench-store teachers precompute train eval clean
FULL_FIXTURES ?= /tmp/meal-full-fixtures

all: build

build:
	$(CARGO) build --release --workspace

## test: formatting, lints and every test (tests are built optimised: [profile.test]).
## The label-store test reads shards with pyarrow, DuckDB and Polars: pydeps installs them.
test: fmt-check clippy pydeps unit

pydeps:
	@python3 -c "import pyarrow, duckdb, polars" 2>/dev/null || python3 -m pip install -q pyarrow duckdb polars

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

## test-full: the opt-in checks - full-size presets and a save/load round trip through
## timm (needs python3 with torch, timm, safetensors; writes ~2 GB to $(FULL_FIXTURES))
test-full:
	python3 common/tests/fixtures/make_model_fixtures.py --full $(FULL_FIXTURES)
	MEAL_FULL_FIXTURES=$(FULL_FIXTURES) $(CARGO) test --workspace -- --ignored

## demo-data: the synthetic demo dataset (ImageFolder of JPEGs) under $(DATA)
demo-data: $(DATA)/synth.json

$(DATA)/synth.json:
	$(CARGO) run --release -p meal-data --bin meal-data -- synth --out $(DATA)

## bench: input-pipeline throughput, ours beside PIL + torchvision (BENCHMARKS.md)
bench:
	bash bench/data_pipeline.sh

## bench-store: label-store bytes per crop and read speed
bench-store:
	$(CARGO) bench -p meal-common --bench store

## bench-models: teacher inference and student train step, ours beside PyTorch (slow)
bench-models:
	bash bench/models.sh

# Stages not built yet; each says so instead of pretending (see the open issues).
teachers precompute train eval:
	@echo "make $@: not implemented yet - the model, label-store, precompute and student issues add it." >&2
	@echo "What exists today: make demo-data, make bench, make test." >&2
	@exit 1

clean:
	$(CARGO) clean
	rm -rf $(DEMO) bench/out
