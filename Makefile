# The two commands of the README's contract: `make demo` and `make test`. Both set everything up on a
# fresh machine (a virtualenv under .venv, the package and Airflow installed from the project's own
# files) and are safe to run again.
#
# Every install takes its versions from constraints/<Airflow>/constraints-<Python>.txt, as Airflow's
# docs ask: known-good pins kept in this repository (`make constraints` regenerates them), so a new
# release of some dependency cannot break a supported line. `make drift` checks the newest releases.
#
# The repository holds two distributions, both installed editable from the working tree: the provider
# (.) and the emulator of the API (klingfx-emulator/), which the provider's `emulator` extra (pulled in
# by `test` and `dev`) requires: given as an editable, uv takes it instead of looking for a release.

PYTHON ?= python3
VENV ?= .venv
AIRFLOW_VERSION ?= 3.3.2
# uv itself is pinned too: it resolves every install below.
UV_VERSION ?= 0.13.10
BIN := $(VENV)/bin
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
AIRFLOW_LINE := $(word 1,$(subst ., ,$(AIRFLOW_VERSION))).$(word 2,$(subst ., ,$(AIRFLOW_VERSION)))
CONSTRAINTS := constraints/$(AIRFLOW_VERSION)/constraints-$(PY_VERSION).txt
# Releases known to break a line (with the reason), applied by `make constraints` and `make drift`.
EXCLUSIONS := $(wildcard constraints/exclusions-$(AIRFLOW_LINE).txt)
STAMP := $(VENV)/.installed-airflow-$(AIRFLOW_VERSION)-py$(PY_VERSION)
DEPLOY_STAMP := $(VENV)/.installed-deploy-$(AIRFLOW_VERSION)-py$(PY_VERSION)
DOCS_STAMP := $(VENV)/.installed-docs-$(AIRFLOW_VERSION)-py$(PY_VERSION)
UV_INSTALL = $(BIN)/uv pip install --python $(BIN)/python --quiet -c $(CONSTRAINTS)
EMULATOR := ./klingfx-emulator
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=10
# `make test` leaves out the tests that start a whole Airflow deployment (several minutes each);
# CI runs them too, with `make test-deployment`.
PYTEST_MARKERS ?= not deployment
# `make drift`: a throwaway venv of the newest releases that resolve (minus the known exclusions),
# and the tests that show first when a dependency breaks Airflow or the provider.
DRIFT_VENV ?= .venv-drift-$(AIRFLOW_VERSION)-py$(PY_VERSION)
DRIFT_TESTS ?= tests/integration/test_provider_discovery.py tests/integration/test_example_dags.py \
	-k "discovery or parse or one_photo"

.PHONY: help venv deploy-venv servers browser demo test test-deployment test-production lint typecheck pytest \
	bench emulator constraints drift drift-venv drift-report docs clean

help:
	@echo "make demo   - run an example DAG end to end against the built-in emulator (or the real API with AIMLAPI_KEY set)"
	@echo "make test   - ruff, mypy and the test suite (AIRFLOW_VERSION=$(AIRFLOW_VERSION))"
	@echo "make test-deployment - the tests that run a whole Airflow deployment (scheduler, triggerer, ...)"
	@echo "make test-production - the production-shaped deployment: PostgreSQL, Celery + Redis, 200 generations"
	@echo "make bench  - benchmarks, written to benchmarks/RESULTS.md"
	@echo "make docs   - the documentation site in docs/_build/html, warnings as errors, links checked"
	@echo "make constraints - regenerate the pinned versions in constraints/ (AIRFLOW_VERSIONS=..., PYTHONS=...)"
	@echo "make drift  - the discovery and example-DAG tests on the newest releases, with what changed"

$(CONSTRAINTS):
	@echo "No pinned versions for Airflow $(AIRFLOW_VERSION) on Python $(PY_VERSION) ($@)." >&2
	@echo "Supported: $$(ls constraints/*/constraints-*.txt | sed 's|constraints/||;s|/constraints-| on Python |;s|.txt||' | tr '\n' ',')" >&2
	@echo "Pick another PYTHON=..., or add the pair: make constraints AIRFLOW_VERSIONS=$(AIRFLOW_VERSION) PYTHONS=$(PY_VERSION)" >&2
	@exit 1

# A venv made with another Python than $(PYTHON) is made again.
$(STAMP): pyproject.toml $(EMULATOR)/pyproject.toml $(CONSTRAINTS)
	if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PY_VERSION)" ]; then \
		rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV_INSTALL) -e ".[dev]" -e $(EMULATOR) "apache-airflow==$(AIRFLOW_VERSION)"
	rm -f $(VENV)/.installed-airflow-* $(VENV)/.installed-deploy-* $(VENV)/.installed-docs-*
	touch $@

venv: $(STAMP)

# The Python side of the production-shaped deployment: the `deploy` extra (Celery, Redis, PostgreSQL
# drivers) on top of the dev install.
$(DEPLOY_STAMP): $(STAMP)
	$(UV_INSTALL) -e ".[dev,deploy]" -e $(EMULATOR) "apache-airflow==$(AIRFLOW_VERSION)"
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
	$(BIN)/lint-imports --no-cache

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
DEPLOY_PYTEST_ARGS ?= -n 2 --dist loadgroup --durations=5
test-deployment: browser
	$(MAKE) pytest PYTEST_MARKERS="deployment and not production" PYTEST_ARGS="$(DEPLOY_PYTEST_ARGS)"

# The production-shaped deployment (tests/deployment/test_production.py): PostgreSQL, the
# CeleryExecutor with Redis, two workers, two triggerers, 200 generations through an outage and a
# triggerer's death. Alone (no xdist): it needs both cores. CI runs it on the newest Airflow only.
test-production: servers deploy-venv
	$(MAKE) pytest PYTEST_MARKERS=production PYTEST_ARGS="-p no:xdist --durations=5 tests/deployment"

# The documentation site (docs/): Sphinx with the `docs` extra, on top of the dev install (autodoc imports
# the package, hence Airflow). Warnings are errors and every cross-reference must resolve (-W -n); -E
# rereads every page, since an incremental build would not repeat the warnings of unchanged pages.
# Then the links, offline: Sphinx's linkcheck for local files (external URLs are ignored in
# docs/conf.py: no internet here), and scripts/check_links.py for every internal anchor of the built
# site and the README's links into the repository and the site.
SPHINX_OPTS ?= -q
$(DOCS_STAMP): $(STAMP)
	$(UV_INSTALL) -e ".[docs]" "apache-airflow==$(AIRFLOW_VERSION)"
	touch $@

# autodoc imports Airflow, which reads (and may create) $AIRFLOW_HOME: a throwaway one under the build.
SPHINX := AIRFLOW_HOME="$(CURDIR)/docs/_build/airflow-home" $(BIN)/sphinx-build -W --keep-going -n $(SPHINX_OPTS)
docs: $(DOCS_STAMP)
	rm -rf docs/_build  # what an earlier build left could be checked too
	$(SPHINX) -E -b html -d docs/_build/doctrees docs docs/_build/html
	$(SPHINX) -b linkcheck -d docs/_build/doctrees docs docs/_build/linkcheck
	$(BIN)/python scripts/check_links.py --site docs/_build/html README.md

demo: venv
	$(BIN)/python scripts/demo.py

emulator: venv
	$(BIN)/python -m klingfx_emulator

bench: venv
	$(UV_INSTALL) -e ".[dev,bench]" -e $(EMULATOR) "apache-airflow==$(AIRFLOW_VERSION)"
	$(BIN)/python benchmarks/run.py

# Regenerate the pins (all supported Airflow versions and Pythons unless narrowed), from both
# pyproject.toml files (the provider's extras, the emulator's dependencies) and
# constraints/exclusions-*.txt. Run .ci/run before committing the result.
AIRFLOW_VERSIONS ?=
PYTHONS ?=
UV_TOOL := .venv-uv/bin/uv
$(UV_TOOL):
	$(PYTHON) -m venv .venv-uv
	.venv-uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

constraints: $(UV_TOOL)
	PATH="$(abspath .venv-uv/bin):$$PATH" $(PYTHON) scripts/constraints.py $(AIRFLOW_VERSIONS) \
		$(foreach p,$(PYTHONS),--python $(p)) $(if $(UPGRADE),--upgrade)

# The newest releases that resolve (minus the known exclusions), in a throwaway venv: the discovery and
# example-DAG tests, and the packages whose versions differ from the pins. A failure here, with the pinned
# lines green, names a new release that breaks this line: add it to constraints/exclusions-<line>.txt.
# `drift-venv` alone builds the venv (CI does it in the background, while other tests run);
# `drift-report` then diffs and tests it (building it first if it is missing).
drift: drift-venv
	$(MAKE) drift-report

drift-venv:
	rm -rf $(DRIFT_VENV)
	$(PYTHON) -m venv $(DRIFT_VENV)
	$(DRIFT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(DRIFT_VENV)/bin/uv pip install --python $(DRIFT_VENV)/bin/python --quiet --upgrade \
		$(if $(EXCLUSIONS),-c $(EXCLUSIONS)) -e ".[dev]" -e $(EMULATOR) "apache-airflow==$(AIRFLOW_VERSION)"

drift-report:
	test -x $(DRIFT_VENV)/bin/pytest || $(MAKE) drift-venv
	$(DRIFT_VENV)/bin/python scripts/constraints.py --diff $(CONSTRAINTS)
	$(DRIFT_VENV)/bin/python -m pytest -p no:cacheprovider --basetemp="$$(mktemp -d -t klingfx-drift-XXXXXX)" \
		-n 2 --dist loadfile $(DRIFT_TESTS) \
	|| { echo "DRIFT: Airflow $(AIRFLOW_VERSION) on Python $(PY_VERSION) fails with the newest releases;" \
		"the packages above differ from $(CONSTRAINTS)." >&2; exit 1; }

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache build dist *.egg-info $(EMULATOR)/dist docs/_build
