# One command each on a fresh clone: the venv is created and the project installed on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export REPAIR_RAY_DATA ?= $(abspath ../shared/data)
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install test test-slow test-all demo bench lint typecheck constraints clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install  ## the default (fast) suite, as CI runs it
	$(PY) -m pytest

test-slow: install  ## only the slow tests: real training and kill/resume sweeps
	$(PY) -m pytest -m slow

test-all: install
	$(PY) -m pytest -m 'slow or not slow'

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
