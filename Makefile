# `make demo` and `make test` do all the set-up: a virtualenv in .venv with sweeper installed into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	rm -rf demo && mkdir -p demo
	$(BIN)/sweeper run examples/digits.yaml --database-url sqlite:///demo/sweeper.db --logdir demo/runs --cpu-workers 2

test: $(INSTALLED)
	$(BIN)/python -m pytest

# The edit-test loop: the suite less the tests that train models, drive a browser, start real processes
# or rerun on PostgreSQL (the markers in pyproject.toml say which); `make test` still runs them all.
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m "not training and not browser and not e2e and not postgres"

bench: $(INSTALLED)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/claims.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/pbt.py
	$(BIN)/python bench/keras_search.py
	$(BIN)/python bench/page.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/multi_gpu.py

clean:
	rm -rf demo .pytest_cache
