# vqad: `make demo` runs the whole job end to end, `make test` runs the tests.
# Each target installs what it needs into .venv first (torch's CPU build before the project).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The tests run in up to 4 processes (pytest-xdist), each taking one test file at a time, so that
# a file's daemons and fixtures stay together: 8 minutes instead of 13 on 2 cores.
# TEST_WORKERS=0 runs them in pytest's own process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
# make bench REAL=DIR (and bench-quick REAL=DIR) adds every real category (MVTec layout) under DIR
# to the accuracy part;
# BENCH_ARGS passes more flags to benchmarks.run (e.g. "--steps 1000 --minutes 90").
REAL ?=
BENCH_ARGS ?=

# The line's box as JetPack 6 has it: Python 3.10 with vqad[edge] alone (no torch). Where this
# machine has a Python 3.10 (pyenv's, or on the PATH), `make test` makes that environment and the
# tests run the line's commands in it (tests/test_edge_box.py); elsewhere they are skipped.
EDGE_PYTHON ?= $(shell for p in $(HOME)/.pyenv/versions/3.10*/bin/python3.10 python3.10; do \
	$$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
EDGE_VENV ?= .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed

.PHONY: install test demo bench bench-quick lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

$(EDGE_STAMP): pyproject.toml
	$(EDGE_PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/pip install -q -e ".[edge,postgresql]"
	touch $(EDGE_STAMP)

test: install $(if $(EDGE_PYTHON),$(EDGE_STAMP))
	$(if $(EDGE_PYTHON),VQAD_EDGE_PYTHON=$(abspath $(EDGE_VENV))/bin/python) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

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
	rm -rf demo .pytest_cache .ruff_cache build *.egg-info $(EDGE_VENV)
