# Single entry point. `make test` and `make bench` set up everything they need
# on a fresh machine (a virtual environment in .venv with the CPU build of torch).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qfx-installed

.PHONY: setup test demo demo-quick bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The local CPU wheel; an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -n 2

# The main job on the bundled digits data (qfx.demo.pipeline): train (learned binary points; K-hot
# MLP too) -> export -> integer reference vs emulation -> qfx-gen RTL + board scripts + HLS ->
# qfx sim (Verilator + C simulation, 1000 vectors, bit-exact verdict) -> qfx cost (Yosys) ->
# accuracy table; outputs and summary.json in out/demo/.
demo: setup
	$(PY) -m qfx.cli demo -o out/demo --force

# The same pipeline at reduced size (short training, 200 vectors, no accuracy table): what CI runs.
demo-quick: setup
	$(PY) -m qfx.cli demo -o out/demo-quick --quick --force

bench: setup
	$(PY) bench/run.py
	$(PY) bench/train_step.py
	# RTL simulation throughput of the demo designs (needs `make demo` first for out/demo/)
	$(PY) bench/sim_throughput.py
	$(PY) bench/accel_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
