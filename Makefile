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

.PHONY: install demo test lint format golden bench lab clean
.DEFAULT_GOAL := demo

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC) $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name tunebook --display-name "Python (tunebook)" >/dev/null
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/tunebook run $(PARAMS)

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest tests/unit tests/nbval $(NBVAL)

lint: install
	$(BIN)/ruff check .
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

lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf data/runs data/chroma data/models data/registry.json reports/*/ reports/index.html
