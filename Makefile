# customer-vitals: `make demo` and `make test` work on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo dashboards lint test unit integration bench bench-churn chaos promtool clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vitals demo

# Every dashboard query and recording rule has data from a Prometheus that scraped 2 minutes
# of `vitals demo` (2.5 to 3 minutes, so `make test` skips it).
dashboards: $(STAMP) promtool
	RUN_DEMO_DASHBOARDS=1 $(BIN)/python -m pytest -q tests/integration/test_dashboards_demo_e2e.py

# promtool (Debian's prometheus package) checks and unit-tests the alert rules.
promtool:
	bash deploy/scripts/ensure-tools.sh

# ruff (pyproject.toml [tool.ruff]: style, imports, bugbear, aware datetimes, complexity <= 15)
# and mypy (models/ and streams/); `make test` stops at the first error.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Two pytest processes (pytest-xdist): each integration file stays in one process, and the
# tests that work off a large backlog with workers of their own run one at a time in one of
# them (tests/integration/conftest.py), so the two cores are not both given to backlogs.
# `make test PYTEST_JOBS=0` runs everything in one process.
PYTEST_JOBS ?= 2
XDIST = $(if $(filter 0,$(PYTEST_JOBS)),,-n $(PYTEST_JOBS) --dist loadgroup)

test: lint promtool
	$(BIN)/python -m pytest -q $(XDIST)
	$(BIN)/python -m pytest -q --doctest-modules models

unit: $(STAMP) promtool
	$(BIN)/python -m pytest -q tests/unit tests/agents
	$(BIN)/python -m pytest -q --doctest-modules models

integration: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) tests/integration

bench: $(STAMP)
	$(BIN)/python tests/bench/bench_worker.py

# The determinism and crash matrices against a reference run (see docs/chaos.md; long).
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.matrix --seeds 1,2 --kills 6 --markdown

# The churn model against the health score and an offline yardstick, on each churn profile.
bench-churn: $(STAMP)
	$(BIN)/python -m tests.bench.bench_churn

clean:
	rm -rf $(VENV) build *.egg-info
