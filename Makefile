# `make test` and `make demo` set up .venv themselves (idempotent: re-run only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.trapo-installed

.PHONY: setup test test-fast lint demo demo-quick clean layout

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the pinned 2.13.0 CPU wheel, before anything can pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Everything, slow tests included, on two worker processes (one torch thread each).
test: lint
	$(BIN)/python -m pytest -q -m "" -n 2 --dist worksteal

test-fast: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/trapo demo

demo-quick: setup
	$(BIN)/trapo demo --quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

layout: setup
	$(BIN)/python tools/readme_layout.py --write
