# The two README commands: `make demo` runs the pipeline on generated sample data, `make test` runs the tests.
# `make bench` measures the image stage (not part of CI).
# Each (re)creates .venv when requirements change. Everything runs offline.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m beam_pipeline.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf .demo .bench .pytest_cache

bench: $(STAMP)
	$(PY) -m beam_pipeline.bench
