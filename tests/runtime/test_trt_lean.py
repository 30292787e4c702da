"""The TensorRT lean runtime (``tensorrt_lean_bindings``) as a flavour of the runner: which engines it takes (only
version-compatible plans of full TensorRT, by the version rules of its report), the host code such a plan carries,
and one clear line, never TensorRT's log spam or a crash, when there is no GPU (checked through cuda-python before
TensorRT starts), for every flavour. The glue runs on the labelled fakes of tests/fakes.py; the no-GPU path also runs
the real lean and TensorRT-RTX modules and the real cuda-python on this GPU-less machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import cuda_device_present
from fakes import (  # labelled fakes of TensorRT, CUDA
    Fakes,
    assert_outputs,
    frames,
    lean_engine,
    load,
    make_report,
    write_engine,
)

from runtime.cuda_mem import NoCudaDeviceError
from runtime.errors import RuntimeInputError

REPO = Path(__file__).resolve().parents[2]


def compatible_engine(tmp_path, fakes, version="11.4.0.106", *, exclude=False, compatible=True, name="vc.engine"):
    """A fake plan of full TensorRT whose report says how it was built; it embeds a lean runtime unless excluded."""
    blob = b"FAKE-TRT-PLAN:" + name.encode() + version.encode() + bytes(exclude) + bytes(compatible)
    report = make_report(blob, trt={"flavour": "tensorrt", "version": version, "strongly_typed": True,
                                    "version_compatible": compatible, "exclude_lean_runtime": exclude})
    host_code = compatible and not exclude
    return write_engine(tmp_path, fakes, name, blob=blob, report=report, host_code=host_code)


def test_lean_runtime_runs_a_version_compatible_plan_and_allows_its_host_code(tmp_path):
    fakes = Fakes("tensorrt_lean_bindings")
    with load(compatible_engine(tmp_path, fakes), fakes) as r:
        x = frames(2, 5)
        assert_outputs(r.infer(x), x)
    assert fakes.trt.runtimes[0].engine_host_code_allowed is True  # the plan's lean runtime is code: allowed
    # A plan without the lean runtime inside needs no host code, so none is allowed.
    with load(compatible_engine(tmp_path, fakes, exclude=True, name="small.engine"), fakes) as r:
        assert_outputs(r.infer(x), x)
    assert fakes.trt.runtimes[1].engine_host_code_allowed is False


def test_lean_runtime_refuses_other_engines_before_cuda_or_tensorrt_starts(tmp_path):
    fakes = Fakes("tensorrt_lean_bindings")
    plain = compatible_engine(tmp_path, fakes, compatible=False)
    with pytest.raises(RuntimeInputError, match=r"lean runtime 11\.4\.0\.106 runs only version-compatible engines "
                                                 r"of full TensorRT, and this engine \(built by tensorrt 11\.4\.0\.106\)"
                                                 r" is not one: build one .*--version-compatible"):
        load(plain, fakes)
    blob = b"RTX-PLAN" * 8
    rtx = write_engine(tmp_path, fakes, "rtx.engine", blob=blob,
                       report=make_report(blob, trt={"flavour": "tensorrt_rtx", "version": "1.7.1.116"}))
    with pytest.raises(RuntimeInputError, match=r"\(built by tensorrt_rtx 1\.7\.1\.116\) is not one"):
        load(rtx, fakes)
    assert fakes.trt.calls["Runtime"] == 0 and fakes.cuda.rt.calls["cudaGetDeviceCount"] == 0


@pytest.mark.parametrize("flavour, installed, built, exclude, ok", [
    ("tensorrt_lean_bindings", (11, 4, 0, 106), "11.2.0.5", False, True),  # a later 11.x runs an embedded-runtime plan
    ("tensorrt_lean_bindings", (11, 4, 0, 106), "11.2.0.5", True, False),  # lean runtime excluded: exactly 11.2.0.5
    ("tensorrt_lean_bindings", (11, 2, 0, 5), "11.4.0.106", False, False),  # never an older runtime
    ("tensorrt_lean_bindings", (11, 4, 0, 106), "10.13.0.35", False, False),  # nor across a major version
    ("tensorrt", (11, 4, 0, 106), "11.2.0.5", False, True),  # full TensorRT follows the same rules
])
def test_version_rules_of_version_compatible_plans(tmp_path, flavour, installed, built, exclude, ok):
    fakes = Fakes(flavour, version=installed)
    path = compatible_engine(tmp_path, fakes, built, exclude=exclude)
    if ok:
        with load(path, fakes) as r:
            assert r.infer(frames(1, 2))["clip_logits"].shape == (1, 3)
        return
    need = f"exactly {built}" if exclude else f"{built} or a later {built.split('.')[0]}.x"
    with pytest.raises(RuntimeInputError, match=rf"version-compatible plan of TensorRT {built}, which needs {need}"):
        load(path, fakes)


@pytest.mark.parametrize("flavour, who", [("tensorrt_lean_bindings", "the TensorRT lean runtime"),
                                          ("tensorrt", "TensorRT"), ("tensorrt_rtx", "TensorRT-RTX")])
def test_no_cuda_device_is_one_line_before_tensorrt_starts(tmp_path, flavour, who):
    fakes = Fakes(flavour, devices=0)
    blob = b"PLAN" * 16
    trt = {"flavour": "tensorrt" if flavour != "tensorrt_rtx" else flavour,
           "version": ".".join(map(str, fakes.tm.version)), "version_compatible": flavour != "tensorrt_rtx"}
    path = write_engine(tmp_path, fakes, blob=blob, report=make_report(blob, trt=trt))
    with pytest.raises(NoCudaDeviceError) as info:
        load(path, fakes)
    assert str(info.value) == f"no CUDA device: {who} needs an NVIDIA GPU (cudaGetDeviceCount found 0 devices)"
    assert fakes.trt.calls["Runtime"] == 0 and fakes.cuda.rt.device_set is None


_NO_GPU_SCRIPT = textwrap.dedent("""
    import sys
    import runtime
    try:
        runtime.load(sys.argv[1])
    except Exception as e:
        print(f"{type(e).__name__}: {e}")
    else:
        print("loaded")
""")


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.parametrize("flavour, who", [("tensorrt_lean_bindings", "the TensorRT lean runtime"),
                                          ("tensorrt_rtx", "TensorRT-RTX")])
def test_real_tensorrt_without_a_gpu_says_so_in_one_line(tmp_path, flavour, who):
    """The real modules and cuda-python: TensorRT 11.4's lean Runtime logs CUDA errors and can crash the process
    without a GPU; the runner checks for a device first and says it in one line."""
    module = pytest.importorskip(flavour)
    pytest.importorskip("cuda.bindings.runtime")
    if cuda_device_present():
        pytest.skip("a CUDA device is present: this is the no-GPU path")
    engine = lean_engine(tmp_path, module.__version__)
    if flavour == "tensorrt_rtx":
        report = json.loads((tmp_path / "model.engine.json").read_text())
        report["trt"] = {"flavour": flavour, "version": module.__version__}
        (tmp_path / "model.engine.json").write_text(json.dumps(report))
    line = rf"NoCudaDeviceError: no CUDA device: {who} needs an NVIDIA GPU \(cudaGetDeviceCount failed: [^\n]+\)"
    (tmp_path / "check.py").write_text(_NO_GPU_SCRIPT)
    proc = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(engine)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**clean_env(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr  # no crash
    assert re.fullmatch(line, proc.stdout.strip()), proc.stdout
    assert "[TRT]" not in proc.stderr + proc.stdout  # TensorRT never started, so it logged nothing
    cli = subprocess.run([sys.executable, "-m", "runtime", "info", str(engine), "--device", "cuda"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=clean_env())
    assert cli.returncode == 3 and cli.stdout == ""
    assert len(cli.stderr.splitlines()) == 1, cli.stderr
    assert re.fullmatch(f"error: {re.escape(str(engine))} cannot run on this machine: {line}", cli.stderr.strip())
