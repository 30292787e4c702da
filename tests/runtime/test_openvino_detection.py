"""OpenVINO is detected by what it does here, not by an import: the plugin installs on any x86-64 machine but lists a
CPU device only on Intel CPUs. These tests run on every machine (AMD or Intel, plugin installed or not): what a
machine without a usable OpenVINO sees, and every refusal that needs no OpenVINO device.

The no-device case is simulated with the one test seam, ``runtime.backends.openvino._openvino_cpu_devices`` (the device
query); the plugin's import, registration and the runner's checks stay real.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import runtime
from runtime.backends import openvino
from runtime.errors import RuntimeInputError

pytest.importorskip("onnxruntime")

OPENVINO = "OpenVINOExecutionProvider"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_paths(tiny_checkpoint, tmp_path_factory):
    from export.to_onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx-ovd"), precision="fp32").paths


@pytest.fixture
def fresh_probe(monkeypatch):
    """The probe's per-process answer forgotten before and after the test, so a seam set here cannot leak."""
    monkeypatch.setattr(openvino, "_USABLE", {})  # monkeypatch puts the real answer back afterwards


@pytest.fixture
def no_device(monkeypatch, fresh_probe):
    """A machine whose plugin is installed but offers no CPU device (an AMD CPU)."""
    if not openvino.openvino_installed():
        pytest.skip("the no-device case needs the OpenVINO plugin installed (pip install '.[openvino]')")
    monkeypatch.setattr(openvino, "_openvino_cpu_devices", lambda ort: [])


def test_plugin_without_a_device_is_reported_and_refused(no_device, onnx_paths):
    reason = openvino.openvino_unavailable_reason()
    assert reason is not None and "installed but offers no CPU device" in reason
    assert openvino.openvino_installed()  # installed, yet not usable: the mistake this guards against
    with pytest.raises(RuntimeInputError, match="offers no CPU device on this machine"):
        runtime.load(onnx_paths["model"], providers=[OPENVINO])
    with runtime.load(onnx_paths["model"]) as cpu:  # the default path is untouched
        assert cpu.provider == "CPUExecutionProvider"


def test_missing_plugin_is_reported_and_refused(onnx_paths, monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)  # import fails as if not installed
    monkeypatch.setattr(openvino, "openvino_installed", lambda: False)
    assert "not installed" in openvino.openvino_unavailable_reason()
    with pytest.raises(RuntimeInputError, match="pip install onnxruntime-ep-openvino"):
        runtime.load(onnx_paths["model"], providers=[OPENVINO])


def test_probe_answers_once_per_process(monkeypatch, fresh_probe):
    calls = []
    monkeypatch.setattr(openvino, "_probe_openvino", lambda: calls.append(1) or "no OpenVINO in this test")
    first, second = openvino.openvino_unavailable_reason(), openvino.openvino_unavailable_reason()
    assert first == second == "no OpenVINO in this test"
    assert calls == [1]


def test_usable_plugin_really_ran_the_probe_graph(fresh_probe):
    reason = openvino.openvino_unavailable_reason()
    if reason:
        pytest.skip(f"OpenVINO cannot run here: {reason}")
    import onnxruntime as ort

    assert openvino._openvino_cpu_devices(ort)  # usable means a device is listed and the one-node graph ran on it


def test_demo_skips_openvino_rows_with_one_line(no_device, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo_runtime", REPO / "scripts" / "demo_runtime.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    rows, skipped = demo.openvino_candidates(tmp_path)
    assert rows == [] and skipped.startswith("skipped the OpenVINO rows: ") and "no CPU device" in skipped
    assert "\n" not in skipped


def test_refusals_that_need_no_openvino_device(onnx_paths):
    model = onnx_paths["model"]
    with pytest.raises(RuntimeInputError, match=r"openvino_precision must be one of \('f32', 'bf16', 'f16'\)"):
        runtime.load(model, providers=[OPENVINO], openvino_precision="fp16")
    with pytest.raises(RuntimeInputError, match="openvino_precision applies to OpenVINOExecutionProvider only"):
        runtime.load(model, device="cpu", openvino_precision="bf16")
    with pytest.raises(RuntimeInputError, match="combines only with CPUExecutionProvider"):
        runtime.load(model, providers=[OPENVINO, "CUDAExecutionProvider"])
    with pytest.raises(RuntimeInputError, match="device 'cuda' contradicts"):
        runtime.load(model, device="cuda", providers=[OPENVINO])
    with pytest.raises(RuntimeInputError, match=r"ignores provider options \['cache_dir'\].*CACHE_DIR"):
        runtime.load(model, providers=[(OPENVINO, {"cache_dir": "ov-cache"})])
    with pytest.raises(RuntimeInputError, match="set the precision with openvino_precision="):
        runtime.load(model, providers=[(OPENVINO, {"load_config": {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}})])
    with pytest.raises(RuntimeInputError, match="load_config must map a device to its properties"):
        runtime.load(model, providers=[(OPENVINO, {"load_config": {"CACHE_DIR": "ov-cache"}})])
    with pytest.raises(RuntimeInputError, match="load_config must be a dict or JSON object"):
        runtime.load(model, providers=[(OPENVINO, {"load_config": "{not json"})])


def test_probe_graph_is_the_documented_one_node_relu():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert openvino.PROBE_GRAPH == model.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(openvino.PROBE_GRAPH), full_check=True)


def test_openvino_providers_select_the_openvino_runner(onnx_paths):
    """runtime.load picks OpenVinoRunner (an OnnxRuntimeRunner) for providers naming OpenVINO, and only for those;
    each constructor builds its own class and refuses the other's providers in one line."""
    from runtime.backends import runner_class
    from runtime.backends.onnxrt import OnnxRuntimeRunner

    assert runner_class("onnxruntime", {"providers": [(OPENVINO, {})]}) is openvino.OpenVinoRunner
    assert issubclass(openvino.OpenVinoRunner, OnnxRuntimeRunner)
    for providers in (None, ["CPUExecutionProvider"], "OpenVINOExecutionProvider"):
        assert runner_class("onnxruntime", {"providers": providers}) is OnnxRuntimeRunner
    model = onnx_paths["model"]
    with pytest.raises(RuntimeInputError, match=r"OpenVINOExecutionProvider runs in OpenVinoRunner .*: open .*model\.onnx "
                                                r"with runtime\.load\(path, providers=\['OpenVINOExecutionProvider'\]\)"):
        OnnxRuntimeRunner(model, providers=[OPENVINO])
    with pytest.raises(RuntimeInputError, match=r"OpenVinoRunner runs on OpenVINOExecutionProvider, but providers are "
                                                r"\['CPUExecutionProvider'\]"):
        openvino.OpenVinoRunner(model, providers=["CPUExecutionProvider"])
    with runtime.load(model, device="cpu") as r:
        assert type(r) is OnnxRuntimeRunner and r.stage_providers == {"cnn": "CPUExecutionProvider",
                                                                       "bilstm": "CPUExecutionProvider"}


def test_the_openvino_runner_defaults_to_the_openvino_provider(onnx_paths):
    """OpenVinoRunner(path) asks for OpenVINO without a providers list (here it then says why it cannot run)."""
    reason = openvino.openvino_unavailable_reason()
    if reason is None:
        with openvino.OpenVinoRunner(onnx_paths["model"]) as r:
            assert r.stage_providers["cnn"] == OPENVINO
        return
    # The plugin's own refusal (missing, or no device on this CPU): the runner did ask for OpenVINO.
    with pytest.raises(RuntimeInputError, match="needs its plugin package|offers no CPU device|OpenVINO plugin"):
        openvino.OpenVinoRunner(onnx_paths["model"])
