# Conveyor: two commands on a fresh machine — `make demo` and `make test`.
# Everything they need (venv, Python packages, Azurite) is installed here, nothing by hand.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install demo test lint types unit functional e2e bench chaos up clean

install: $(STAMP) $(NODE_STAMP)

$(STAMP): requirements.txt requirements-local.txt requirements-dev.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q --upgrade pip
	$(PIP) install --disable-pip-version-check -q -c constraints.txt -r requirements-dev.txt
	$(PIP) install --disable-pip-version-check -q --no-deps -e .
	@touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

demo: install
	$(VENV)/bin/conveyor demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

functional: install
	$(PY) -m pytest tests/functional -q

e2e: install
	$(PY) -m pytest tests/e2e -q

test: install lint types infra-check
	$(PY) -m pytest tests -q

bench: install
	$(PY) -m bench

# SIGKILLs `conveyor up` (its process group) 100 times while 40 runs are in flight, then runs 20 at
# 20% injected faults; prints the figures (bench/chaos.py) and fails on any lost or redone work.
chaos: install
	$(PY) -m bench.chaos

up: install
	$(VENV)/bin/conveyor up

clean:
	rm -rf .conveyor .pytest_cache .mypy_cache .ruff_cache

# --- infra-check: offline checkov scan of infra/ (Bicep) in its own venv -----------------
# checkov pins packages that fight the app's, so it lives in .venv-checkov. The scan is
# offline: --skip-download and BC_SKIP_MAPPING stop Prisma Cloud look-ups,
# CKV_SKIP_PACKAGE_UPDATE_CHECK stops the PyPI version check. Re-runs only when infra/ changes.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_INSTALLED := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
CHECKOV_STAMP := $(CHECKOV_VENV)/.infra-checked
INFRA_FILES := $(wildcard infra/*.bicep infra/modules/*.bicep infra/*.json infra/*.bicepparam)
CHECKOV_ENV := BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=true
CHECKOV_ARGS := -d infra --framework bicep --skip-download --quiet --compact

.PHONY: infra-check
infra-check: $(CHECKOV_STAMP)

$(CHECKOV_INSTALLED): infra/checkov-constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --disable-pip-version-check -q -c infra/checkov-constraints.txt "checkov==$(CHECKOV_VERSION)"
	@rm -f $(CHECKOV_VENV)/.installed-*
	@touch $@

$(CHECKOV_STAMP): $(CHECKOV_INSTALLED) $(INFRA_FILES)
	$(CHECKOV_ENV) $(CHECKOV_VENV)/bin/checkov $(CHECKOV_ARGS)
	@touch $@
