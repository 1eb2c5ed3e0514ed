# One command each: `make demo` sets up and runs a secure inference; `make test` sets up and runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export KERAS_BACKEND := torch

.PHONY: setup demo test test-slow lint format bench bench-transformers clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m mpcc.demo

lint: setup
	$(VENV)/bin/ruff check mpcc tests benchmarks examples
	$(VENV)/bin/ruff format --check mpcc tests benchmarks examples

format: setup
	$(VENV)/bin/ruff check --fix mpcc tests benchmarks examples
	$(VENV)/bin/ruff format mpcc tests benchmarks examples

test: lint
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/run.py

bench-transformers: setup
	$(PY) benchmarks/transformers.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
