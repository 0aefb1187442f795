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
	$(BIN)/pip install -q -e ".[test,web]"
	touch $@

demo: $(BIN)/mimicshield
	HF_HUB_OFFLINE=1 $(BIN)/mimicshield demo --output out/demo

# The browser test drives Debian's Chromium (never a browser Playwright downloads); as root,
# the target installs it when it is missing, elsewhere that test is skipped with the reason.
test: $(BIN)/mimicshield
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
		else echo "note: no /usr/bin/chromium and not root: the browser test will be skipped"; fi; \
	fi
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
