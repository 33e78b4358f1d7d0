# The two commands of the README's contract: `make demo` and `make test`. Both set everything up on a
# fresh machine (a virtualenv under .venv, the package and Airflow installed from the project's own
# files) and are safe to run again.

PYTHON ?= python3
VENV ?= .venv
AIRFLOW_VERSION ?= 3.3.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-airflow-$(AIRFLOW_VERSION)
DEPLOY_STAMP := $(VENV)/.installed-deploy-$(AIRFLOW_VERSION)
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=10
# `make test` leaves out the tests that start a whole Airflow deployment (several minutes each);
# CI runs them too, with `make test-deployment`.
PYTEST_MARKERS ?= not deployment

.PHONY: help venv deploy-venv servers browser demo test test-deployment test-production lint typecheck pytest \
	bench emulator clean

help:
	@echo "make demo   - run an example DAG end to end against the built-in emulator (or the real API with AIMLAPI_KEY set)"
	@echo "make test   - ruff, mypy and the test suite (AIRFLOW_VERSION=$(AIRFLOW_VERSION))"
	@echo "make test-deployment - the tests that run a whole Airflow deployment (scheduler, triggerer, ...)"
	@echo "make test-production - the production-shaped deployment: PostgreSQL, Celery + Redis, 200 generations"
	@echo "make bench  - benchmarks, written to benchmarks/RESULTS.md"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev]" "apache-airflow==$(AIRFLOW_VERSION)"
	rm -f $(VENV)/.installed-airflow-* $(VENV)/.installed-deploy-*
	touch $@

venv: $(STAMP)

# The Python side of the production-shaped deployment: the `deploy` extra (Celery, Redis, PostgreSQL
# drivers) on top of the dev install.
$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev,deploy]" "apache-airflow==$(AIRFLOW_VERSION)"
	touch $@

deploy-venv: $(DEPLOY_STAMP)

# The servers of the production-shaped deployment, from Debian's packages, installed only when
# missing (the test starts throwaway ones of its own: nothing is configured or left running).
servers:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || test -x /usr/bin/redis-server || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		echo "installing$$missing (Debian packages)"; \
		$$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing; \
	fi

# The browser of the UI views' tests (tests/ui), Debian's chromium, installed only when missing:
# Playwright drives it (executable_path), it never downloads a browser of its own. A font, so the
# pages have text to render on a bare machine.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		echo "installing chromium (Debian package)"; \
		$$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends \
			chromium fonts-dejavu-core; \
	fi

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

# The local-shape deployment tests (SQLite, LocalExecutor). The production-shaped one is marked
# `production` as well as `deployment`, and left out here: it needs PostgreSQL and Redis, takes
# about 5 minutes of both cores, and has its own target below. The UI views' tests (tests/ui) drive a
# real browser: `browser` installs it first.
test-deployment: browser
	$(MAKE) pytest PYTEST_MARKERS="deployment and not production" PYTEST_ARGS="-n 2 --dist loadgroup --durations=5"

# The production-shaped deployment (tests/deployment/test_production.py): PostgreSQL, the
# CeleryExecutor with Redis, two workers, two triggerers, 200 generations through an outage and a
# triggerer's death. Alone (no xdist): it needs both cores. CI runs it on the newest Airflow only.
test-production: servers deploy-venv
	$(MAKE) pytest PYTEST_MARKERS=production PYTEST_ARGS="-p no:xdist --durations=5 tests/deployment"

demo: venv
	$(BIN)/python scripts/demo.py

emulator: venv
	$(BIN)/python -m airflow_provider_klingfx.emulator

bench: venv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev,bench]" "apache-airflow==$(AIRFLOW_VERSION)"
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache build dist *.egg-info
