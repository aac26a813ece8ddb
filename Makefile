# The two README commands: `make demo` runs the pipeline on generated sample data, `make test` runs the tests.
# `make bench` measures the image and text stages against their raw limits, the image stage reading from a GCS
# emulator with storage latency (beam_pipeline/bench_gcs.py), then the whole pipeline end to end on generated
# full-size samples at two sizes (beam_pipeline/bench_e2e.py; about 17 minutes on 2 cores; not part of CI).
# Each (re)creates .venv when requirements change: the development set (requirements-dev.txt = the runtime
# requirements.txt that the image installs, plus tests and user-side tools), pinned by constraints.txt.
# The demo, tests and benchmarks run offline; creating .venv (pip) and installing Chromium (apt) need the network.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv browser clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m beam_pipeline.demo

# The data card's browser test uses Debian's Chromium (headless, loopback only); install it when it is missing.
# Not root: through sudo when it needs no password, else a message saying what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the report's browser test"; \
	  as_root=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  { $$as_root apt-get update -qq && $$as_root env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq chromium >/dev/null; } || { echo "error: the data card's browser test needs \
	Chromium: install it as root (apt-get install chromium), then rerun make test" >&2; exit 1; }; }

test: $(STAMP) browser
	$(PY) -m pytest -q tests

clean:
	rm -rf .demo .bench .pytest_cache

bench: $(STAMP)
	$(PY) -m beam_pipeline.bench
	$(PY) -m beam_pipeline.bench_gcs
	$(PY) -m beam_pipeline.bench_e2e
