# prmforge: every target installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test lint validate demo world ui bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# CPU build from local disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .

validate: install
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

test: lint validate
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/prmforge run --profile demo

world: install
	$(VENV)/bin/prmforge run --profile world

ui: install
	$(VENV)/bin/prmforge ui

clean:
	rm -rf .prmforge .dagster_home test-artifacts
