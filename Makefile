# Two entry points, both from a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
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

test: setup system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	bash scripts/system-deps.sh bench
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/quantize_bench.py
	$(BIN)/python benchmarks/serve_bench.py
	$(BIN)/python benchmarks/scale_bench.py
	$(BIN)/python benchmarks/drift_bench.py

clean:
	rm -rf $(VENV) .shipyard .pytest_cache
