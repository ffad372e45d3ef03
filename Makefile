# Two entry points: `make demo` and `make test`. Both create/reuse .venv and install what they need.
# torch/torchvision are pinned in every pip call: an unpinned torch pulls GBs of CUDA wheels.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIN     := torch==2.13.0 torchvision==0.28.0
STAMP   := $(VENV)/.robustsim-installed

.PHONY: demo test test-fast test-portable docs lint venv clean browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q $(PIN) -e ".[zoo,lipschitz,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/robustsim demo

# the leaderboard's browser test drives Debian's chromium (playwright's browser download does not work here)
browser:
	@command -v chromedriver >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || \
	   echo "could not install chromium: the browser test will be skipped")

# the tests that compare two computations (layouts, threads, processes, batch sizes), run again under a second
# kernel configuration: ATen's default (non-SIMD-dispatched) kernels, oneDNN limited to SSE4.1, MKL to SSE4.2, and
# every metric fed channels-last images; a dependence on one CPU's kernel bits fails here before it ships
SECOND_KERNELS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
	ROBUSTSIM_TEST_LAYOUT=channels_last
PORTABLE = $(SECOND_KERNELS) $(BIN)/python -m pytest -n 2 --dist loadgroup -m portable tests

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests
	$(PORTABLE)

test-portable: $(STAMP)
	$(PORTABLE)

# docs/results.md from the experiments' committed tables, then the site (build/site); broken links fail
docs: $(STAMP)
	$(BIN)/python experiments/tables.py --docs
	$(BIN)/mkdocs build --strict

# the inner loop: every test but the slow ones (pretrained CNN / ViT forwards, torchrun, SIGKILL, browser)
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info runs .pytest_cache .ruff_cache .hypothesis
