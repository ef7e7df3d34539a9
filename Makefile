# Everything a newcomer needs: `make demo` (try it) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: convergence install demo test test-unit lint format lock schema bench bench-compare run migrate clean

# Exact versions with hashes (`make lock` writes them from pyproject.toml's ranges):
# requirements.txt the runtime (the Docker image), requirements-dev.txt runtime + `.[test]`
# (this venv, CI), requirements-build.txt the build backend (the image's build stage, and the
# editable install here: no build isolation, so nothing unlocked is downloaded).
PIP := $(BIN)/pip --disable-pip-version-check

$(BIN)/.installed: pyproject.toml requirements-dev.txt requirements-build.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes -r requirements-dev.txt -r requirements-build.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check  # pyproject.toml's ranges against the locked versions: `make lock` if this fails
	touch $@

install: $(BIN)/.installed

demo: install  ## try it: throwaway PostgreSQL + Stripe emulator + the daemon, ~1 minute, no key needed
	$(BIN)/syncd demo

test: install  ## the whole suite against a throwaway PostgreSQL (no Docker needed)
	$(BIN)/pytest

test-unit: install  ## the fast layer, ~20 s: the tests that need no PostgreSQL (marked `unit` in tests/conftest.py)
	$(BIN)/pytest -m 'unit and not bench'

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict syncd

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

convergence: install  ## 1,000 randomized convergence scenarios (SCENARIOS=N, SEED=S to change); a failure prints its replay command
	SYNCD_CONVERGENCE_SCENARIOS=$(or $(SCENARIOS),1000) SYNCD_CONVERGENCE_SEED=$(or $(SEED),1) $(BIN)/pytest -q tests/test_convergence.py -k random

bench: install  ## every benchmark with the parameters behind the figures in docs/ (long)
	$(BIN)/python bench/emulator_throughput.py --customers 100000 --seconds 10 --concurrency 4
	PYTHONPATH=. $(BIN)/python bench/resync_bench.py --customers 200000 --unix-socket
	PYTHONPATH=. $(BIN)/python bench/resync_bench.py --customers 200000 --latency-ms 100 --rate 100 --unix-socket
	PYTHONPATH=. $(BIN)/python bench/events_bench.py latency --seconds 60 --rate 4
	PYTHONPATH=. $(BIN)/python bench/events_bench.py snapshot --events 50000
	PYTHONPATH=. $(BIN)/python bench/events_bench.py refetch --events 3000 --rate-limit 100
	$(BIN)/python bench/usage_bench.py --rows 100000 --customers 1000 --spread 60
	for limits in test live; do for skew in "" "--hot 5 --hot-share 0.9 --hot-spread 10800"; do \
	  PYTHONPATH=. $(BIN)/python bench/usage_limits_bench.py --limits $$limits $$skew || exit 1; done; done
	PYTHONPATH=. $(BIN)/python bench/views_bench.py --customers 100000 --queries 2000
	PYTHONPATH=. $(BIN)/python bench/takeover_bench.py --rounds 5

bench-compare: install  ## syncd against @supabase/stripe-sync-engine, 200k customers (needs Node.js + npm; downloads the engine)
	PYTHONPATH=. $(BIN)/python bench/compare_sync_engine.py

run: install  ## the daemon with ./config.toml and the environment
	$(BIN)/syncd run

migrate: install
	$(BIN)/syncd migrate

# pip-tools in a venv of its own (not a dependency of syncd). Pins already in the lock files are
# kept while pyproject.toml allows them; `make lock LOCK_FLAGS=--upgrade` moves all to the newest.
LOCK_TOOLS := $(VENV)/lock-tools
LOCK_FLAGS ?=
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS)

$(LOCK_TOOLS)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet --disable-pip-version-check pip-tools==7.7.0

lock: $(LOCK_TOOLS)/bin/pip-compile  ## rewrite the lock files from pyproject.toml
	$(COMPILE) -o requirements.txt pyproject.toml
	$(COMPILE) --extra test -c requirements.txt -o requirements-dev.txt pyproject.toml
	$(COMPILE) --only-build-deps --build-deps-for wheel --build-deps-for editable \
		-c requirements-dev.txt -o requirements-build.txt pyproject.toml

schema: install  ## rewrite sql/schema.sql from sql/migrations/ (a throwaway PostgreSQL)
	$(BIN)/python scripts/dump_schema.py sql/schema.sql

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist build
