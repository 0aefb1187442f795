# Set-up and the two front-door commands (see README). Works offline except for the package
# registry; torch is pinned to the CPU build that this kind of machine carries on disk.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test

$(BIN)/mimicshield: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/mimicshield
	HF_HUB_OFFLINE=1 $(BIN)/mimicshield demo --output out/demo

test: $(BIN)/mimicshield
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
