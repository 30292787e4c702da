"""The lightest TensorRT deployment really installs: a fresh virtual environment gets only
`pip install ".[trt-lean]"` (numpy, Pillow, cuda-python and the TensorRT lean runtime wheels: no PyTorch, no ONNX
Runtime, no full TensorRT), and from outside the checkout `runtime.load(engine)` of a version-compatible engine goes
all the way to the GPU check, which on this GPU-less machine is the one clear no-CUDA line; `python -m runtime info`
describes the engine from its report. (One venv, about 20 s: the wheels come from pip's cache after the first run.)"""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import cuda_device_present, fresh_venv, run_checked
from fakes import lean_engine  # a report beside stand-in plan bytes

pytest.importorskip("tensorrt_lean_bindings")  # the trt-lean extra is part of `make venv`

_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    from importlib import metadata
    import runtime
    result = {"absent": [m for m in ("torch", "onnxruntime", "tensorrt", "tensorrt_rtx", "onnx")
                         if importlib.util.find_spec(m) is not None]}
    try:
        runtime.load(sys.argv[1])
        result["load"] = "loaded"
    except Exception as e:
        result["load"] = f"{type(e).__name__}: {e}"
    result["heavy_loaded"] = [m for m in ("torch", "onnxruntime") if m in sys.modules]
    result["dists"] = sorted(d.metadata["Name"].lower().replace("_", "-") for d in metadata.distributions())
    json.dump(result, open(sys.argv[2], "w"))
""")


@pytest.fixture(scope="module")
def lean_python(tmp_path_factory):
    return fresh_venv(tmp_path_factory.mktemp("trt-lean"), "trt-lean")


def test_runtime_load_with_only_the_lean_extra(lean_python, tmp_path):
    version = run_checked([str(lean_python), "-c", "import tensorrt_lean_bindings as t; print(t.__version__)"],
                          cwd=tmp_path).stdout.strip()
    engine = lean_engine(tmp_path, version)
    (tmp_path / "check.py").write_text(_SCRIPT)
    outside = tmp_path / "elsewhere"  # not the checkout: the installed package must be what runs
    outside.mkdir()
    run_checked([str(lean_python), str(tmp_path / "check.py"), str(engine), str(tmp_path / "got.json")], cwd=outside)
    got = json.loads((tmp_path / "got.json").read_text())
    assert got["absent"] == [] and got["heavy_loaded"] == []
    assert {"numpy", "pillow", "cuda-python", "tensorrt-lean-cu13-libs", "tensorrt-lean-cu13-bindings",
            "cnn-bilstm-deploy"} <= set(got["dists"])
    if cuda_device_present():
        pytest.skip("a CUDA device is present: the stand-in plan would reach TensorRT")
    assert got["load"] == ("NoCudaDeviceError: no CUDA device: the TensorRT lean runtime needs an NVIDIA GPU "
                           "(cudaGetDeviceCount failed: CUDA driver version is insufficient for CUDA runtime version)")
    info = run_checked([str(lean_python), "-m", "runtime", "info", str(engine)], cwd=outside).stdout
    assert f"built by tensorrt {version}" in info and "version-compatible" in info
