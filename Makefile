# `make serve` serves the default model; `make test` runs every test.
# Both create or refresh the virtual environment in .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint venv

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so pip keeps the local CPU build (see constraints.txt)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,metrics,embed,ray,test,dev]'
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/hypercorn examples.app:app --bind $(HOST):$(PORT)

test: $(STAMP)
	$(PY) -m pytest

PY_TREES := asgi_host tests examples bench

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PY_TREES)
	$(VENV)/bin/ruff format --check $(PY_TREES)
	$(VENV)/bin/mypy --strict asgi_host
