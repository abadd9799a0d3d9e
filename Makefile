# Single entry point. `make test` and `make bench` set up everything they need
# on a fresh machine (a virtual environment in .venv with the CPU build of torch).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qfx-installed

.PHONY: setup test demo bench clean

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

# The main job on the bundled digits data: accuracy table, then train -> export ->
# integer reference (bit-exact verdict) -> RTL, board scripts and HLS (qfx-gen) -> RTL (Verilator)
# and C simulation of 1000 vectors against the reference (qfx sim) -> cost reports (qfx cost); outputs in out/.
demo: setup
	$(PY) -m qfx.cli demo -o out/demo --force
	$(PY) -m qfx.gen out/demo/cnn_w8/manifest --board ultra96 -o out/gen/cnn_w8 --target rtl,hls --force
	$(PY) -m qfx.gen out/demo/mlp_khot/manifest --board ultra96 -o out/gen/mlp_khot --target rtl,hls --force
	$(PY) -m qfx.cli sim out/gen/cnn_w8 --vectors 1000 --run out/demo/cnn_w8/run
	$(PY) -m qfx.cli sim out/gen/mlp_khot --vectors 1000 --run out/demo/mlp_khot/run
	$(PY) -m qfx.cli cost out/gen/cnn_w8
	$(PY) -m qfx.cli cost out/gen/mlp_khot
	$(PY) -m qfx.cli demo-accuracy -o out/accuracy

bench: setup
	$(PY) bench/run.py
	$(PY) bench/train_step.py
	# RTL simulation throughput of the demo designs (needs `make demo` first for out/demo/)
	$(PY) bench/sim_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
