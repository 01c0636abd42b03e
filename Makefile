# Set-up and everyday commands. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed on its own first, pinned, so that resolving the project never pulls another build
# (a plain `pip install torch` downloads several GB of CUDA packages). Override for a GPU build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench figures gpu-run clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

SAMPLE := classsr_cli/samples/picos-de-europa.png

demo: $(STAMP)
	mkdir -p out
	$(BIN)/classsr upscale $(SAMPLE) out/picos-de-europa-x4.png --model fsrcnn \
		--class-map out/picos-de-europa-classes.png --overwrite
	@echo "wrote out/picos-de-europa-x4.png and its class map out/picos-de-europa-classes.png"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check classsr_cli tests benchmarks
	$(BIN)/ruff format --check classsr_cli tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# The README's pictures (docs/figures/) from the shipped weights, the validation photos and benchmark JSON:
# PHOTOS=<folder>, BENCH="<classsr bench --json outputs>", PEER=<benchmarks.plain_peer output>; see
# docs/benchmarks.md. A picture whose input is not given is skipped.
PHOTOS ?= datasets/val
BENCH ?=
PEER ?=

figures: $(STAMP)
	$(BIN)/python -m benchmarks.figures --photos "$(PHOTOS)" $(if $(BENCH),--bench $(BENCH)) \
		$(if $(PEER),--peer "$(PEER)")

# Fills .gpu/ (training photos made to fit, wheels) for a GPU machine without a network; prints the call to
# make. A call for a slimmable ledger: make gpu-run GPU_FAMILIES=rcan GPU_RESUME=training/rcan (docs/gpu.md).
GPU_PHOTOS ?= datasets/photos
GPU_FAMILIES ?=
GPU_RESUME ?=
GPU_VAL ?= datasets/val

gpu-run: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_prepare --photos "$(GPU_PHOTOS)" $(if $(GPU_FAMILIES),--families $(GPU_FAMILIES)) \
		$(if $(GPU_RESUME),--resume "$(GPU_RESUME)" --val "$(GPU_VAL)")

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
