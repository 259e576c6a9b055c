# tunebook: `make demo` runs the demo pipeline, `make test` runs the tests. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build by accident.
# CUDA users: make install TORCH_SPEC=torch==2.13.0 TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PARAMS ?= params/demo.yaml
NBVAL := --nbval-lax --nbval-current-env --sanitize-with tests/nbval/sanitize.cfg

# llama.cpp, for GGUF export and serving parity (stage 05). Its converter comes from llama-cpp-python's source
# distribution and llama-cpp-python itself is compiled from it once into a wheel cache; both live in .cache/
# (never in git, kept by `make clean`), so a new venv installs in a second. The version is pinned once, in
# pyproject.toml's `gguf` extra. The build is CPU-only and portable (AVX2), without the multimodal and `common`
# libraries the Python bindings never load. CUDA: make install LLAMA_CMAKE_ARGS="-DGGML_CUDA=on".
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_CACHE := .cache/llama.cpp
LLAMA_SDIST := $(LLAMA_CACHE)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CONVERTER := $(LLAMA_CACHE)/converter-$(LLAMA_CPP_VERSION)
LLAMA_WHEEL := $(LLAMA_CACHE)/wheels/.built-$(LLAMA_CPP_VERSION)
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF

.PHONY: install demo test lint format golden bench lab clean lock
.DEFAULT_GOAL := demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A cold install is two long waits, the Python stack's downloads (about 3 minutes) and llama.cpp's compile (3 to 6):
# they are independent targets, and make runs two targets at a time, so the compile runs while pip installs the stack.
MAKEFLAGS += --jobs=2

$(BIN)/.stack: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC) $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(BIN)/.installed: $(BIN)/.stack $(LLAMA_CONVERTER) $(LLAMA_WHEEL)
	$(BIN)/pip install --quiet -c constraints.txt --find-links $(LLAMA_CACHE)/wheels -e '.[dev,gguf]'
	$(BIN)/python -m ipykernel install --sys-prefix --name tunebook --display-name "Python (tunebook)" >/dev/null
	touch $@

install: $(BIN)/.installed

$(LLAMA_SDIST): | $(BIN)/python
	$(BIN)/pip download --quiet --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(@D)

# Only the converter and what it imports (2 MB of the sdist's 77), with llama.cpp's licence.
$(LLAMA_CONVERTER): $(LLAMA_SDIST)
	rm -rf $@.tmp && mkdir -p $@.tmp
	tar xzf $< -C $@.tmp --strip-components=3 $(addprefix llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/,\
		convert_hf_to_gguf.py conversion gguf-py LICENSE)
	rm -rf $@ && mv $@.tmp $@

# llama-cpp-python FORCEs LLAMA_BUILD_COMMON on; a normal variable set right after project() shadows it.
$(LLAMA_WHEEL): $(LLAMA_SDIST)
	@echo "Compiling llama-cpp-python $(LLAMA_CPP_VERSION) once (3-6 minutes on 2 cores); later installs reuse $(@D)"
	echo 'set(LLAMA_BUILD_COMMON OFF)' > $(LLAMA_CACHE)/no-common.cmake
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/$(LLAMA_CACHE)/no-common.cmake" \
		$(BIN)/pip wheel --quiet --no-deps -w $(@D) $<
	touch $@

demo: install
	$(BIN)/tunebook run $(PARAMS)

# The runs index is tested in a real browser: Debian's chromium, installed here when it is missing (as root).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@echo "Installing Debian's chromium for the browser test of the runs index"
	apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Python checks run model-written code in Debian's bubblewrap (tunebook.sandbox), installed here when it is missing.
# After chromium: make runs two targets at a time, and two apt-gets at once fight over dpkg's lock.
BWRAP := /usr/bin/bwrap
$(BWRAP): | $(CHROMIUM)
	@echo "Installing Debian's bubblewrap, the sandbox of python checks"
	apt-get install -y -qq bubblewrap >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null)

# Unit tests on both cores (pytest-xdist, a file's tests on one worker so that its servers and models are set up
# once), each worker and the kernels it starts on one thread: two workers of two OpenMP threads each on two cores
# took twice as long (13 min vs 7: their threads spin waiting for each other). The reference notebooks run after,
# in order, as each reads the artifacts of the one before.
test: install $(CHROMIUM) $(BWRAP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/pytest tests/unit -n 2 --dist loadfile --durations=15
	$(BIN)/pytest tests/nbval $(NBVAL)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Refresh the nbval reference notebooks: run params/ci.yaml in a scratch workdir and keep its notebooks.
golden: install
	rm -rf .golden && mkdir .golden
	TUNEBOOK_WORKDIR=$(CURDIR)/.golden $(BIN)/tunebook run params/ci.yaml --force
	cp .golden/reports/ci/*.ipynb tests/nbval/
	rm -rf .golden

# Performance ratios, measured in one run each; results land in reports/bench/ (not a test: no timing asserts).
bench: install
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

# JupyterLab on the notebooks, whose kernel is this venv's (`Python (tunebook)`).
# Extra options: make lab LAB_ARGS="--no-browser --port 8890". As root (containers), JupyterLab needs --allow-root.
LAB_ARGS ?=
lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf data/runs data/chroma data/models data/registry.json reports/*/ reports/index.html

# Record the versions this environment was tested with (torch and llama-cpp-python are pinned on their own).
lock: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -viE '^(torch|llama[-_]cpp[-_]python)=='; } > constraints.tmp
	mv constraints.tmp constraints.txt
