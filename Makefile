# vaultrelay: every target bootstraps what it needs (venv, Python deps, Azurite via npm ci).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed
CHECKOV_VENV := .venv-checkov
STAMP_CHECKOV := $(CHECKOV_VENV)/.installed

.PHONY: setup test lint typecheck unit scan-infra demo sandbox bench bench-sync clean serve

setup: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools==84.2.1
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(STAMP_PY)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP_PY)
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest

## checkov over infra/ with .checkov.yaml, from its own venv (its packaging<24 pin conflicts with
## pytest 9).  A file checkov cannot parse fails the scan instead of being left out.
$(STAMP_CHECKOV): requirements-scan.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-scan.txt
	touch $@

scan-infra: $(STAMP_CHECKOV)
	CKV_PARSE_ERROR_FAIL=true $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml

## The README's test command: lint + type check + infra scan + the whole test suite.
test: lint typecheck scan-infra unit

## The README's demo command: local Azure, a sync, what was pushed, a bundle over HTTP.
demo: setup
	$(PY) -m demo

## Run the sandbox alone (env file in .sandbox/env) until Ctrl-C.
sandbox: setup
	$(PY) -m sandbox --env-file .sandbox/env

bench: setup
	$(PY) bench/resolve.py

## The resilience suite's long form against its own sandbox: one table of figures, PASS/FAIL per
## scenario (ARGS="--short" for the short form make test runs, ARGS="--only 'crash anywhere'").
.PHONY: soak
soak: setup
	$(PY) bench/soak.py $(ARGS)

## Sync of 1,000 envs x 20 references, first and unchanged re-sync (ARGS="--envs 50" for a quick run).
bench-sync: setup
	$(PY) bench/sync.py $(ARGS)

## With Azure Functions Core Tools on PATH: the Function host against the sandbox.
serve: setup
	./scripts/serve.sh

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .sandbox .pytest_cache .mypy_cache .ruff_cache
