# Two commands set everything up on a fresh Debian machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PKG_DIRS := bipsim ap cp net uicc link ota trace scenarios

.PHONY: demo test bench fuzz soak stress lint typecheck pytest clean FORCE

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"

# Stamps re-run the install whenever the dependency pins change.
$(VENV)/.runtime: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e .
	touch $@

# the Debian tools first: pyscard (dev) builds against libpcsclite-dev
$(VENV)/.dev: $(VENV)/.runtime
	tools/install-debian-tools.sh
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.runtime
	tools/install-debian-tools.sh --demo
	$(BIN)/bipsim demo

# mypy cannot follow setuptools' editable finder, so it checks a link tree shaped like the installed package.
build/typecheck/bipsim: FORCE
	rm -rf build/typecheck && mkdir -p build/typecheck/bipsim
	ln -sfn $(abspath bipsim)/* build/typecheck/bipsim/
	for d in $(filter-out bipsim,$(PKG_DIRS)); do ln -sfn $(abspath $$d) build/typecheck/bipsim/$$d; done

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev build/typecheck/bipsim
	MYPYPATH=build/typecheck $(BIN)/mypy -p bipsim

# Two pytest-xdist workers, one per core of the CI machine; a test file stays on one worker (its module fixtures,
# such as the recorded session of the replay tests, are made once). PYTEST_WORKERS=0 runs in one process. The 15
# slowest tests are listed at the end, to keep the suite's budget (well under 5 minutes) in sight.
PYTEST_WORKERS ?= 2
pytest: $(VENV)/.dev
	tools/install-debian-tools.sh
	$(BIN)/pytest -q --durations=15 $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test: lint typecheck pytest

bench: $(VENV)/.dev
	tools/install-debian-tools.sh
	@for b in bench/bench_*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

# Fuzzing (docs/development.md, "Fuzzing"): the hypothesis fuzz tests under the long profile, then each atheris
# target for FUZZ_SECONDS; every target runs even when one finds a crasher (kept in build/fuzz/fuzz_<target>/).
FUZZ_SECONDS ?= 30

$(VENV)/.fuzz: $(VENV)/.dev
	$(PIP) install -q -c constraints.txt -e '.[dev,fuzz]'
	touch $@

fuzz: $(VENV)/.fuzz
	BIPSIM_FUZZ_PROFILE=long $(BIN)/pytest -q -o timeout=1800 tests/fuzz
	@failed=""; for t in tests/fuzz/atheris/fuzz_*.py; do name=$$(basename $$t .py); \
	  echo "== $$name ($(FUZZ_SECONDS) s)" >&2; mkdir -p build/fuzz/$$name; \
	  $(BIN)/python -m tests.fuzz.atheris.$$name -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=build/fuzz/$$name/ build/fuzz/$$name/corpus || failed="$$failed $$name"; \
	done; if [ -n "$$failed" ]; then echo "crashers found by:$$failed (inputs in build/fuzz/<name>/)" >&2; exit 1; fi

# the suite under stress (docs/development.md): STRESS_RUNS runs of CI=true .ci/run on a fresh clone of HEAD,
# two CPU burners beside them; logs and summary.txt in build/stress
STRESS_RUNS ?= 10
stress:
	tools/stress-suite.sh $(STRESS_RUNS) 2 build/stress

# the soak run of docs/development.md: ten minutes of OTA sessions with faults; SOAK_ARGS adds options (--seed 7)
soak: $(VENV)/.runtime
	$(BIN)/bipsim soak --duration 600 $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis .benchmarks
	find . -name __pycache__ -prune -exec rm -rf {} +

FORCE:
