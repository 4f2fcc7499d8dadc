# Shepherd: `make run` sets up and starts everything, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install install-test run test test-postgres bench bench-postgres lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	bash .ci/system-packages

run: install
	$(BIN)/flask --app webapp db upgrade
	$(BIN)/flask --app webapp users check
	$(BIN)/honcho start

# Two test processes share the machine's cores; tests marked serial (CPU
# saturation, benchmarks) then run alone, so they disturb no other test.
test: install-test
	$(BIN)/pytest -n 2 -m "not serial"
	$(BIN)/pytest -m serial

test-postgres: install-test
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/shepherd_test} $(BIN)/pytest -n 2 -m "not serial"
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/shepherd_test} $(BIN)/pytest -m serial

bench: install-test
	$(BIN)/python bench/run.py

# The same on PostgreSQL: the server .ci/postgres finds or sets up, or BENCH_DATABASE_URL.
bench-postgres: install-test
	BENCH_DATABASE_URL=$${BENCH_DATABASE_URL:-$$(bash .ci/postgres)} $(BIN)/python bench/run.py --output-dir docs/postgresql

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
