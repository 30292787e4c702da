# Two entry points for a fresh machine: `make demo` and `make test`. Each creates or updates .venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision pinned together: PyPI's torchvision does not import beside other torch builds.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# What the main job needs on any x86-64 machine. The OpenVINO plugin (Intel CPUs only) is opt-in: make test-openvino.
EXTRAS := onnx,torch,train,export,trt-rtx,trt-lean,video,plots,dev,serve
STAMP := $(VENV)/.installed-stamp
# The real Triton server for the serving tests: the tritonserver binary inside NVIDIA's nvidia-pytriton wheel, with
# this package (editable, so it serves the checkout's code) and ONNX Runtime for its python-backend models. A venv of
# its own, because nvidia-pytriton pins numpy<2. About 470 MB; about 1 minute to install. NVIDIA's perf_analyzer goes
# beside it (.venv-triton/bin/perf_analyzer; it needs libb64.so.0d: apt-get install libb64-0d, as .ci/run does).
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp
PYTRITON_PIN := nvidia-pytriton==0.7.0
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv triton-env demo test test-openvino lint bench bench-smoke clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[$(EXTRAS)]" $(TORCH_PINS)
	touch $(STAMP)

triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): pyproject.toml Makefile scripts/install_perf_analyzer.sh
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q $(PYTRITON_PIN) -e ".[onnx]"
	bash scripts/install_perf_analyzer.sh $(TRITON_VENV)
	touch $(TRITON_STAMP)

# Train on built-in synthetic clips, evaluate, export ONNX (fp32 + fp16, verified; int8 for CPUs, gated), build
# TensorRT engines, run the runtime against PyTorch, stream a clip, and print a quick latency look. CPU only, no
# downloads.
demo: venv
	DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash scripts/demo.sh

# Unit, integration and CLI tests, plus the benchmark suite in smoke mode (tiny model, smallest grid, untimed): every
# contender's outputs are still checked against eager PyTorch, so the suite cannot rot. The serving tests run against
# the real tritonserver of triton-env.
test: venv triton-env
	TRITON_SERVER_PYTHON=$(abspath $(TRITON_VENV))/bin/python \
		$(PY) -m pytest -q tests benchmarks --benchmark-disable --bench-smoke $(PYTEST_ARGS)

# The OpenVINO paths: installs the opt-in plugin into .venv, then runs every OpenVINO test and benchmark contender.
# They run where the plugin really offers a CPU device (Intel CPUs) and skip with the reason elsewhere (AMD CPUs);
# the detection tests run everywhere. PYTEST_ARGS=--simulate-no-openvino-device takes the no-device path on Intel.
test-openvino: venv
	$(PIP) install -q -e ".[openvino]" $(TORCH_PINS)
	$(PY) -m pytest -q tests benchmarks --benchmark-disable --bench-smoke -k "openvino" $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(TRITON_VENV) runs .pytest_cache
