# Two entry points for a fresh machine: `make demo` and `make test`. Each creates or updates .venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision pinned together: PyPI's torchvision does not import beside other torch builds.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
EXTRAS := onnx,openvino,trt-rtx,plots,dev
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench bench-smoke clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[$(EXTRAS)]" $(TORCH_PINS)
	touch $(STAMP)

# Train on built-in synthetic clips, evaluate, export ONNX (fp32 + fp16, verified; int8 for CPUs, gated), build
# TensorRT engines, run the runtime against PyTorch, stream a clip, and print a quick latency look. CPU only, no
# downloads.
demo: venv
	DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash scripts/demo.sh

# Unit, integration and CLI tests, plus the benchmark suite in smoke mode (tiny model, smallest grid, untimed): every
# contender's outputs are still checked against eager PyTorch, so the suite cannot rot.
test: venv
	$(PY) -m pytest -q tests benchmarks --benchmark-disable --bench-smoke $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

# Full latency suite at the default grid (long on a CPU) and its report, then the paired (interleaved) B=1, T=16
# comparison whose ratio holds up on a noisy machine.
bench: venv
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-json=runs/bench.json
	$(PY) -m benchmarks.report runs/bench.json --out runs/bench-report
	$(PY) -m benchmarks.paired --out runs/bench-report --prefix paired-model-B1-T16

bench-smoke: venv
	$(PY) -m pytest benchmarks -q --benchmark-disable --bench-smoke

clean:
	rm -rf $(VENV) runs .pytest_cache
