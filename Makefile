# Two entry points: `make demo` and `make test`. Both create/reuse .venv and install what they need.
# torch/torchvision are pinned in every pip call: an unpinned torch pulls GBs of CUDA wheels.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIN     := torch==2.13.0 torchvision==0.28.0
STAMP   := $(VENV)/.robustsim-installed

.PHONY: demo test lint venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q $(PIN) -e ".[zoo,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/robustsim demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info runs .pytest_cache .ruff_cache .hypothesis
