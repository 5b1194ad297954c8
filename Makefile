# `make serve` serves the default model; `make test` runs every test.
# Both create or refresh the virtual environment in .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help serve test lint venv

help:  ## this list
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/'

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so pip keeps the local CPU build (see constraints.txt)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,metrics,embed,ray,test,dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create or refresh .venv (torch pinned to the CPU build, every extra)

serve: $(STAMP)  ## serve the default model (Iris) on 127.0.0.1:8000 (HOST=... PORT=... to change)
	$(VENV)/bin/hypercorn examples.app:app --bind $(HOST):$(PORT)

test: $(STAMP)  ## run every test
	$(PY) -m pytest

PY_TREES := asgi_host tests examples bench

lint: $(STAMP)  ## ruff and mypy, as CI runs them
	$(VENV)/bin/ruff check $(PY_TREES)
	$(VENV)/bin/ruff format --check $(PY_TREES)
	$(VENV)/bin/mypy --strict asgi_host
