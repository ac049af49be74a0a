# One entry point for a fresh clone: `make run` (set up + main job), `make test` (set up + tests).
VENV ?= .venv
PYTHON ?= python3
# The torch build installed when the venv has none. On a GPU machine, install your own
# build into $(VENV) first (or pass TORCH_SPEC=...); an existing torch is never replaced.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= out

.PHONY: setup run c4 test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The main job: the built-in tiny study (local Ray, CPU), from corpus to fitted law, report and plots.
run: setup
	$(BIN)/dcsl sweep configs/tiny.yaml --out $(OUT)/tiny
	$(BIN)/dcsl allocate --law $(OUT)/tiny/law.json --flops 1e11,1e12,1e13 --unique-tokens 400K

# The published C4 law from the reference runs (no training).
c4: setup
	$(BIN)/dcsl fit examples/datablations_c4.csv --base-preset c4 --bootstrap 200 --seed 0 --out $(OUT)/c4_law.json
	$(BIN)/dcsl allocate --law $(OUT)/c4_law.json --flops 1e20,1e21,1e22,1e23 --unique-tokens 25B

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/run_all.py
