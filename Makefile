# vqad: `make demo` runs the whole job end to end, `make test` runs the tests.
# Each target installs what it needs into .venv first (torch's CPU build before the project).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make bench REAL=DIR (and bench-quick REAL=DIR) adds every real category (MVTec layout) under DIR
# to the accuracy part;
# BENCH_ARGS passes more flags to benchmarks.run (e.g. "--steps 1000 --minutes 90").
REAL ?=
BENCH_ARGS ?=

.PHONY: install test demo bench bench-quick lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/vqad demo --workdir demo

bench: install
	$(PY) -m benchmarks.run --repeats 3 $(if $(REAL),--real $(REAL)) $(BENCH_ARGS)

bench-quick: install
	$(PY) -m benchmarks.run --quick $(if $(REAL),--real $(REAL)) $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf demo .pytest_cache .ruff_cache build *.egg-info
