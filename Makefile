# The two commands of the README, and their parts.
#   make shop   set everything up, start the shop as processes (Ctrl-C to stop)
#   make test   set everything up, run lint, types and the whole test suite
#   make bench  the benchmark suite against its peers (bench/README.md), ~10 minutes
#   make docs   the documentation site, live, on http://127.0.0.1:8002 (mkdocs.yml)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.bench-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: shop monolith test lint typecheck pytest bench docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Cleave needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	@touch $(BENCH_STAMP)

shop: $(STAMP)
	$(BIN)/cleave up examples/shop

monolith: $(STAMP)
	$(BIN)/cleave run examples/shop

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict -a 127.0.0.1:8002

clean:
	rm -rf site $(VENV) examples/shop/.cleave .mypy_cache .pytest_cache .ruff_cache
