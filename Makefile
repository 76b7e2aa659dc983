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
# What the tests that install packages install from, with no index: downloaded here, at
# install time, so the test run itself never reaches PyPI. Keyed on the files that name
# its contents: pyproject.toml's pins and the dev tools a new project pins (cleave.scaffold).
WHEELHOUSE := $(VENV)/wheelhouse
WHEELHOUSE_STAMP := $(VENV)/.wheelhouse-$(shell cat pyproject.toml src/cleave/scaffold/__init__.py | cksum | cut -d' ' -f1)
# The image's platform (cleave.deploy.image: CPython 3.11, glibc 2.36, x86_64). pip matches
# wheel tags exactly, so every manylinux tag such a system accepts is named.
IMAGE_PLATFORMS := $(foreach v,$(shell seq 5 36),--platform manylinux_2_$(v)_x86_64) \
	--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64
DOWNLOAD := $(BIN)/python -m pip download --quiet --disable-pip-version-check -d $(WHEELHOUSE)
# A list from pyproject.toml, one requirement a line: python -c "$$PINS" TABLE KEY.
export PINS := import sys, tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))[sys.argv[1]][sys.argv[2]], sep="\n")

.PHONY: shop monolith test lint typecheck pytest wheelhouse bench docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Cleave needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	@touch $(BENCH_STAMP)

# This checkout's dependencies and build backend (a fresh venv installs the checkout), the
# dev tools of `cleave new`'s projects, and the image's requirements for the image's platform.
$(WHEELHOUSE_STAMP): $(STAMP)
	@rm -rf $(WHEELHOUSE) $(VENV)/.wheelhouse-* && mkdir -p $(WHEELHOUSE)
	$(BIN)/python -c "$$PINS" build-system requires > $(WHEELHOUSE)/build.txt
	$(BIN)/python -c "$$PINS" project dependencies > $(WHEELHOUSE)/image.txt
	$(BIN)/python -c 'from cleave.scaffold import DEV_TOOLS; print(*DEV_TOOLS, sep="\n")' > $(WHEELHOUSE)/dev-tools.txt
	$(DOWNLOAD) . -r $(WHEELHOUSE)/build.txt -r $(WHEELHOUSE)/dev-tools.txt
	$(DOWNLOAD) --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
		$(IMAGE_PLATFORMS) -r $(WHEELHOUSE)/image.txt
	@touch $(WHEELHOUSE_STAMP)

wheelhouse: $(WHEELHOUSE_STAMP)

shop: $(STAMP)
	$(BIN)/cleave up examples/shop

monolith: $(STAMP)
	$(BIN)/cleave run examples/shop

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(WHEELHOUSE_STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict -a 127.0.0.1:8002

clean:
	rm -rf site $(VENV) examples/shop/.cleave .mypy_cache .pytest_cache .ruff_cache
