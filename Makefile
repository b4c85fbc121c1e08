# The two commands of the README: `make run` and `make test`.
# Installs come from the lock files (exact versions, checked against their hashes);
# `make lock` refreshes them from pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# A stamp per lock: each is installed once, and again when the lock or pyproject.toml changes.
RUN_STAMP  = $(VENV)/.installed-run
TEST_STAMP = $(VENV)/.installed-test
# The third-party OpenID Connect relying party of the e2e tests (npm, exact lock).
RP_DIR     = tests/e2e/rp
RP_STAMP   = $(RP_DIR)/node_modules/.installed
# The bench's side-by-side peer, panva's node-oidc-provider (npm, exact lock); only
# `make bench` installs it, and `BENCH_PEER=off make bench` leaves it out.
PEER_DIR   = bench/peer
PEER_STAMP = $(PEER_DIR)/node_modules/.installed
BENCH_PEER ?= on
# pytest-xdist workers of `make test` (the tests' Redis databases are set apart for up to 3).
TEST_WORKERS ?= 2
LOCK_VENV  = .venv-lock
PIP_TOOLS  = pip-tools==7.6.2
COMPILE    = $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras \
             --allow-unsafe --no-emit-index-url --no-emit-find-links --upgrade

.PHONY: run test lint install install-test lock bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Every package at its locked version and hash, then this project itself without
# resolving anything; `pip check` fails when pyproject.toml needs something the lock lacks.
define install_lock
	$(BIN)/pip install --quiet --require-hashes -r $(1)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $@
endef

$(RUN_STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(call install_lock,requirements.lock)

$(TEST_STAMP): requirements-test.lock pyproject.toml | $(BIN)/python
	$(call install_lock,requirements-test.lock)

## What running needs (no test toolchain).
install: $(RUN_STAMP)

$(RP_STAMP): $(RP_DIR)/package-lock.json $(RP_DIR)/package.json
	npm ci --prefix $(RP_DIR) --no-audit --no-fund --loglevel=error
	touch $@

## Running plus the `test` extras (pytest, Playwright, ruff, mypy, ...) and the e2e RP.
install-test: $(TEST_STAMP) $(RP_STAMP)

## Start the server on http://127.0.0.1:8081 (SQLite, the dummy site on :8084, demo clients).
run: install
	$(BIN)/oauth2-server serve

## Lint, type-check and run every test; report line and branch coverage of app/.
test: install-test lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --cov=app --cov-report=term

lint: install-test
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy

$(PEER_STAMP): $(PEER_DIR)/package-lock.json $(PEER_DIR)/package.json
	npm ci --prefix $(PEER_DIR) --no-audit --no-fund --loglevel=error
	touch $@

bench: install-test $(if $(filter off,$(BENCH_PEER)),,$(PEER_STAMP))
	BENCH_PEER=$(BENCH_PEER) $(BIN)/python -m bench

## Re-resolve both lock files from pyproject.toml (newest versions allowed; needs PyPI).
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || \
	  { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet '$(PIP_TOOLS)'; }
	$(COMPILE) --output-file requirements.lock pyproject.toml
	$(COMPILE) --extra test --output-file requirements-test.lock pyproject.toml

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(RP_DIR)/node_modules $(PEER_DIR)/node_modules var .pytest_cache .ruff_cache .mypy_cache
