# litbrain: `make demo` and `make test` are the quickstart; both create/refresh .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Tests and the demo run on CPU; keep BLAS from oversubscribing 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-fast bench clean-demo

install: $(STAMP)

# Re-installs only when pyproject.toml changes, so repeated runs are quick. DeepSpeed is installed
# without building its CUDA ops (DS_BUILD_OPS=0): CPU tests check its configs and ZeRO conversions.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,deepspeed]' 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import litbrain, litbrain.datamodules, torch, lightning, deepspeed" \
	  || { echo "litbrain install failed; see the pip output above"; exit 1; }
	@touch $(STAMP)

DEMO := data/demo
demo: $(STAMP)
	$(BIN)/litbrain synthesize --config configs/data/synthetic_demo.yaml
	$(BIN)/litbrain prepare --config configs/data/prepare_demo.yaml
	$(BIN)/litbrain fit --config configs/fmri/demo.yaml
	$(BIN)/litbrain evaluate --config configs/fmri/evaluate_demo.yaml
	$(BIN)/litbrain export --config configs/fmri/export_demo.yaml
	@echo "release folder: runs/demo/release (load it with litbrain.hub.load_release)"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not slow and not slurm"

bench: $(STAMP)
	$(BIN)/python scripts/bench_fmri.py

clean-demo:
	rm -rf $(DEMO) runs/demo
