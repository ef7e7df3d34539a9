# Everything a newcomer needs: `make demo` (try it) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint format bench run migrate clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install  ## try it: throwaway PostgreSQL + Stripe emulator + the daemon, ~1 minute, no key needed
	$(BIN)/syncd demo

test: install  ## the whole suite against a throwaway PostgreSQL (no Docker needed)
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict syncd

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install  ## benchmarks (slow; figures go in docs/)
	$(BIN)/pytest -m bench -p no:cacheprovider -o addopts="" bench

run: install  ## the daemon with ./config.toml and the environment
	$(BIN)/syncd run

migrate: install
	$(BIN)/syncd migrate

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist build
