# The two quick-start commands are `make run` and `make test`; everything else
# is what they are made of.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck rules-check unit bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck rules-check unit  ## set up and pass every check CI runs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
