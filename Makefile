# Two entry points, both from a fresh machine: `make demo` and `make test`; `make test-fast` while changing code.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
LINT_PATHS := src tests benchmarks harness scripts

.PHONY: setup system-deps demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	PY=$(PY) bash scripts/system-deps.sh venv
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests use: a real PostgreSQL, Prometheus, Chromium (dashboard) and the Fashion-MNIST files.
system-deps:
	bash scripts/system-deps.sh

demo: setup
	$(BIN)/shipyard quickstart

# The whole suite (what .ci/run calls): lint, the layout rules, the type checker, every test.
test: setup system-deps
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python scripts/check_layout.py
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit and in-process tests only: no real server, database or training run; under 40 s on 2 cores.
test-fast: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python scripts/check_layout.py
	$(BIN)/mypy
	$(BIN)/python -m pytest tests/unit tests/inprocess $(PYTEST_ARGS)

# ruff, the layout rules (no import cycle in src/shipyard, no module over 500 lines), and mypy over
# src/shipyard (configured in pyproject.toml)
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python scripts/check_layout.py
	$(BIN)/mypy

bench: setup
	bash scripts/system-deps.sh bench
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/quantize_bench.py
	$(BIN)/python benchmarks/serve_bench.py
	$(BIN)/python benchmarks/scale_bench.py
	$(BIN)/python benchmarks/drift_bench.py
	$(BIN)/python benchmarks/ui_bench.py

clean:
	rm -rf $(VENV) .shipyard .pytest_cache .mypy_cache
