# Everything a newcomer needs: `make demo` (try it) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint format bench bench-compare run migrate clean

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

bench: install  ## every benchmark with the parameters behind the figures in docs/ (long)
	$(BIN)/python bench/emulator_throughput.py --customers 100000 --seconds 10 --concurrency 4
	PYTHONPATH=. $(BIN)/python bench/resync_bench.py --customers 200000 --unix-socket
	PYTHONPATH=. $(BIN)/python bench/resync_bench.py --customers 200000 --latency-ms 100 --rate 100 --unix-socket
	PYTHONPATH=. $(BIN)/python bench/events_bench.py latency --seconds 60 --rate 4
	PYTHONPATH=. $(BIN)/python bench/events_bench.py snapshot --events 50000
	PYTHONPATH=. $(BIN)/python bench/events_bench.py refetch --events 3000 --rate-limit 100
	$(BIN)/python bench/usage_bench.py --rows 100000 --customers 1000 --spread 60
	PYTHONPATH=. $(BIN)/python bench/views_bench.py --customers 100000 --queries 2000
	PYTHONPATH=. $(BIN)/python bench/takeover_bench.py --rounds 5

bench-compare: install  ## syncd against @supabase/stripe-sync-engine, 200k customers (needs Node.js + npm; downloads the engine)
	PYTHONPATH=. $(BIN)/python bench/compare_sync_engine.py

run: install  ## the daemon with ./config.toml and the environment
	$(BIN)/syncd run

migrate: install
	$(BIN)/syncd migrate

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist build
