# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup mosquitto demo lint test test-fast bench clean

setup: $(STAMP)

# The MQTT tests start a real Mosquitto broker; Debian's package provides it (the demo needs none).
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
		{ apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; } || \
		{ echo "install the 'mosquitto' package (apt-get install mosquitto) for the MQTT transport"; exit 1; }

# torch first, pinned, so pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/fedrl run examples/cartpole.yaml --out runs/demo-$$(date -u +%Y%m%d-%H%M%S)

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

test: setup mosquitto lint
	$(BIN)/python -m pytest

test-fast: setup mosquitto
	$(BIN)/python -m pytest -m "not slow"

bench: setup mosquitto
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/time_to_solve.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/algorithms.py
	$(BIN)/python benchmarks/bandwidth.py
	$(BIN)/python benchmarks/privacy.py
	$(BIN)/python benchmarks/secagg.py
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/mqtt_vs_grpc.py

clean:
	rm -rf $(VENV) runs .pytest_cache
