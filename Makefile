# The two commands of the README's contract: `make demo` and `make test`. Both set everything up on a
# fresh machine (a virtualenv under .venv, the package and Airflow installed from the project's own
# files) and are safe to run again.

PYTHON ?= python3
VENV ?= .venv
AIRFLOW_VERSION ?= 3.3.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-airflow-$(AIRFLOW_VERSION)
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=10
# `make test` leaves out the tests that start a whole Airflow deployment (several minutes each);
# CI runs them too, with `make test-deployment`.
PYTEST_MARKERS ?= not deployment

.PHONY: help venv demo test test-deployment lint typecheck pytest bench emulator clean

help:
	@echo "make demo   - run an example DAG end to end against the built-in emulator (or the real API with AIMLAPI_KEY set)"
	@echo "make test   - ruff, mypy and the test suite (AIRFLOW_VERSION=$(AIRFLOW_VERSION))"
	@echo "make test-deployment - the tests that run a whole Airflow deployment (scheduler, triggerer, ...)"
	@echo "make bench  - benchmarks, written to benchmarks/RESULTS.md"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev]" "apache-airflow==$(AIRFLOW_VERSION)"
	rm -f $(VENV)/.installed-airflow-*
	touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# Each run gets its own temporary root: pytest prunes old roots of *other* sessions under the shared
# default, which would delete the Airflow home of a suite still running beside this one.
pytest: venv
	$(BIN)/python -m pytest -p no:cacheprovider --basetemp="$$(mktemp -d -t klingfx-pytest-XXXXXX)" \
		-m "$(PYTEST_MARKERS)" $(PYTEST_ARGS)

test: lint typecheck pytest

test-deployment:
	$(MAKE) pytest PYTEST_MARKERS=deployment PYTEST_ARGS="-n 2 --dist loadgroup --durations=5"

demo: venv
	$(BIN)/python scripts/demo.py

emulator: venv
	$(BIN)/python -m airflow_provider_klingfx.emulator

bench: venv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev,bench]" "apache-airflow==$(AIRFLOW_VERSION)"
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache build dist *.egg-info
