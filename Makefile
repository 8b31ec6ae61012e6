# Two commands set everything up on a fresh Debian machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PKG_DIRS := bipsim ap cp uicc link ota trace scenarios

.PHONY: demo test bench lint typecheck pytest clean FORCE

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"

# Stamps re-run the install whenever the dependency pins change.
$(VENV)/.runtime: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.runtime
	tools/install-debian-tools.sh --demo
	$(BIN)/bipsim demo

# mypy cannot follow setuptools' editable finder, so it checks a link tree shaped like the installed package.
build/typecheck/bipsim: FORCE
	rm -rf build/typecheck && mkdir -p build/typecheck/bipsim
	ln -s $(abspath bipsim)/* build/typecheck/bipsim/
	for d in $(filter-out bipsim,$(PKG_DIRS)); do ln -s $(abspath $$d) build/typecheck/bipsim/$$d; done

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev build/typecheck/bipsim
	MYPYPATH=build/typecheck $(BIN)/mypy -p bipsim

pytest: $(VENV)/.dev
	tools/install-debian-tools.sh
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(VENV)/.dev
	tools/install-debian-tools.sh
	@for b in bench/bench_*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis .benchmarks
	find . -name __pycache__ -prune -exec rm -rf {} +

FORCE:
