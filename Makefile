# WiCore: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_MODELS := qwen2.5-coder-0.5b-instruct gemma-3-270m all-minilm-l6-v2
# Mojo owns the threads; a second BLAS pool only fights it (see shared notes).
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install kernels models serve test lint load bench bench-serving bench-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

kernels: install
	$(PY) -m wicore.kernels.build

models: install
	$(VENV)/bin/wicore models pull $(TEST_MODELS)

serve: kernels
	$(VENV)/bin/wicore models pull
	$(VENV)/bin/wicore serve --host 127.0.0.1 --port 8000

test: kernels models
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

load: kernels models
	PY=$(PY) load_tests/run_load.sh

bench: kernels models
	$(PY) benchmarks/bench_decode.py

bench-serving: kernels models
	$(PY) benchmarks/bench_serving.py

bench-peers: install
	$(PY) -m pip install -e '.[peers]'

clean:
	rm -rf .wicore-build .pytest_cache
