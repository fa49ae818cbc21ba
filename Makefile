# One command each on a fresh clone: the venv is created and the project installed on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# ../shared/data (where CI keeps MNIST) only when it is there: else the tool's own default
# (~/.cache/repair_ray/data) or what you set; nothing is created outside the clone for it
ifneq ($(wildcard ../shared/data),)
export REPAIR_RAY_DATA ?= $(abspath ../shared/data)
endif
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install test test-integration test-slow test-all reproduce demo bench lint typecheck constraints clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The three tiers (docs/development.md): tests/conftest.py marks a test `integration` from the fixtures
# it requests; `slow` is marked by hand. DURATIONS=30 prints the slowest thirty, as CI does.
DURATIONS ?= 0
PYTEST := $(PY) -m pytest --durations=$(DURATIONS)

test: install  ## the default tier: every test of no process, head, compile or MNIST training of its own (at most 5 minutes on 2 cores)
	$(PYTEST)

test-integration: install  ## the integration tier: own Ray heads and processes, CLIs, torch.compile, MNIST training, Ray Train groups
	$(PYTEST) -m 'integration and not slow'

test-slow: install  ## the slow tier: sweeps killed and resumed, brute-force optima, the reproduction cells
	$(PYTEST) -m 'slow and not reproduction'

test-all: install  ## the three tiers in one run (not the whole-example reproductions: make reproduce)
	$(PYTEST) -m 'not reproduction'

reproduce: install  ## REPRODUCTION.md's whole example sweeps and their published behaviour (1.5 hours on 2 cores)
	$(PYTEST) -m reproduction

demo: install  ## the quickstart: train 12 MNIST MLPs, analyse their pairs, print the summary, write the report
	$(VENV)/bin/repair-ray run --example quickstart
	$(VENV)/bin/repair-ray report runs/quickstart

bench: install  ## all benchmarks in their own env (.bench/venv, with the rebasin peer); writes BENCHMARKS.md
	bash benchmarks/bench_env.sh
	.bench/venv/bin/python benchmarks/run.py

lint: install  ## ruff: lint rules and formatting, as CI runs them
	$(VENV)/bin/ruff check repair_ray tests analysis benchmarks
	$(VENV)/bin/ruff format --check repair_ray tests analysis benchmarks

typecheck: install  ## mypy in its default (basic) mode over repair_ray/, as CI runs it
	$(VENV)/bin/mypy

constraints: install  ## re-pin constraints.txt to what the venv resolved (after changing a dependency)
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^repair.ray'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf runs reports .pytest_cache
