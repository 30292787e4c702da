"""TensorRT version glue that differs between TensorRT 10.x and 11.x, tested with FakeTensorRT modules (only the
flag and inspector-JSON glue; real builds use the real tensorrt_rtx in test_export_trt.py), plus the real TensorRT-RTX
where installed. The runtime's half is runtime.trt_compat (import, version, logger); the build-only half is
export.trt_build (strongly typed networks, compute capabilities, inspector JSON)."""

from __future__ import annotations

import json
import sys

import pytest
from fakes import make_fake_tensorrt  # a labelled fake of the tensorrt module's enums and flags

from export import trt_build
from export.trt_build import TrtCompatError
from runtime import trt_compat
from runtime.trt_compat import TrtModule, TrtNotAvailableError


def test_parse_version():
    assert trt_compat.parse_version("10.13.0.35") == (10, 13, 0, 35)
    assert trt_compat.parse_version("11.0.0rc1") == (11, 0, 0)
    assert trt_compat.parse_version("1.7.1.116") == (1, 7, 1, 116)
    with pytest.raises(ValueError, match="cannot parse"):
        trt_compat.parse_version("dev")


def test_not_installed_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # None in sys.modules makes the import fail
    with pytest.raises(TrtNotAvailableError) as info:
        trt_compat.import_trt("tensorrt")
    msg = str(info.value)
    assert isinstance(info.value, ImportError)
    assert "pip install tensorrt-cu13" in msg and "pip install tensorrt-rtx-cu13" in msg
    assert "H100/H200" in msg and "GPU" in msg
    with pytest.raises(ValueError, match="valid choices: auto, tensorrt, tensorrt_rtx"):
        trt_compat.import_trt("onnxruntime")


# --- build half: export.trt_build (with the runtime's import_trt) ------------------------------------------------


def test_fake_tensorrt_10x_gets_strongly_typed_flag(monkeypatch):
    fake = make_fake_tensorrt("10.13.0.35")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    tm = trt_compat.import_trt("tensorrt")
    assert tm.flavour == "tensorrt" and tm.version == (10, 13, 0, 35) and tm.major == 10
    assert trt_build.network_creation_flags(tm) == 1 << 1
    net = trt_build.create_network(tm, fake.Builder())
    assert trt_build.is_strongly_typed(tm, net)
    assert trt_build.has_weak_typing_fp16(tm)  # exists in 10.x, never used


def test_fake_tensorrt_11x_without_weak_typing(monkeypatch):
    fake = make_fake_tensorrt("11.4.0.106", fp16_flag=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    tm = trt_compat.import_trt("auto")  # full TensorRT wins over TensorRT-RTX in auto mode
    assert tm.flavour == "tensorrt" and tm.major == 11
    # The deprecated flag (value 0 in 11.x) is still passed: accepted and ignored, strongly typed either way.
    assert trt_build.network_creation_flags(tm) == 1 << 0
    assert not trt_build.has_weak_typing_fp16(tm)
    net = trt_build.create_network(tm, fake.Builder())
    assert trt_build.is_strongly_typed(tm, net)


def test_fake_tensorrt_11x_after_the_flag_is_removed(monkeypatch):
    fake = make_fake_tensorrt("11.9.0", strongly_typed_flag=False, fp16_flag=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    tm = trt_compat.import_trt("tensorrt")
    assert trt_build.network_creation_flags(tm) == 0  # nothing to pass: strongly typed always


def test_fake_tensorrt_too_old_and_cc_refused(monkeypatch):
    tm = TrtModule(trt=make_fake_tensorrt("8.6.1"), flavour="tensorrt", version=(8, 6, 1))
    with pytest.raises(TrtCompatError, match="too old"):
        trt_build.network_creation_flags(tm)
    tm1011 = TrtModule(trt=make_fake_tensorrt("10.11.0"), flavour="tensorrt", version=(10, 11, 0))
    with pytest.raises(TrtCompatError, match=r"needs TensorRT >= 10\.12"):
        trt_build.network_creation_flags(tm1011)
    tm10 = TrtModule(trt=make_fake_tensorrt("10.13"), flavour="tensorrt", version=(10, 13))
    with pytest.raises(TrtCompatError, match="TensorRT-RTX option"):
        trt_build.set_compute_capability(tm10, object(), "8.6")
    assert trt_build.set_compute_capability(tm10, object(), None) is None


FAKE_INSPECTOR_10X = {
    "Layers": [{"Name": "conv1", "LayerType": "CaskConvolution",
                "Inputs": [{"Name": "frames", "Location": "Device", "Dimensions": [1, 3, 16, 16],
                            "Format/Datatype": "Row major linear FP16 format"}],
                "Outputs": [{"Name": "c1", "Location": "Device", "Dimensions": [1, 64, 16, 16],
                             "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]}],
    "Bindings": ["frames", "features"],
}
FAKE_INSPECTOR_11X = {
    "Layers": [{"Name": "conv1", "LayerType": "CaskConvolution",
                "Inputs": [{"Name": "frames", "Dimensions": [1, 3, 16, 16], "Format": "Row major linear (kLINEAR)",
                            "DataType": "Half"}],
                "Outputs": [{"Name": "c1", "Dimensions": [1, 64, 16, 16], "Format": "Channel major (kHWC8)",
                             "DataType": "Half"}]}],
    "I/O Tensors": [
        {"Name": "frames", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, -1, 3, 16, 16]},
        {"Name": "features", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, -1, 512]},
    ],
}


def test_inspector_json_10x_and_11x_normalise_alike():
    a = trt_build.normalize_engine_information(10, json.dumps(FAKE_INSPECTOR_10X))
    b = trt_build.normalize_engine_information(11, FAKE_INSPECTOR_11X)
    for info in (a, b):
        assert [t["name"] for t in info["io_tensors"]] == ["frames", "features"]
        layer = info["layers"][0]
        assert layer["type"] == "CaskConvolution"
        assert layer["inputs"][0]["dtype"] == "HALF" and layer["outputs"][0]["dtype"] == "HALF"
    assert a["io_tensors"][0]["dtype"] is None  # 10.x "Bindings" are names only
    assert b["io_tensors"][0] == {"name": "frames", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, -1, 3, 16, 16]}
    names_only = trt_build.normalize_engine_information(10, {"Layers": ["a", "b"], "Bindings": []})
    assert [layer["name"] for layer in names_only["layers"]] == ["a", "b"]


@pytest.mark.trt
def test_real_tensorrt_rtx_glue():
    pytest.importorskip("tensorrt_rtx")
    tm = trt_compat.import_trt("tensorrt_rtx")
    assert tm.is_rtx and tm.version >= (1, 0)
    logger = trt_compat.make_logger(tm, "warning", collect=True)
    builder = tm.trt.Builder(logger)
    net = trt_build.create_network(tm, builder)
    assert trt_build.is_strongly_typed(tm, net)
    config = builder.create_builder_config()
    assert "8.6" in trt_build.compute_capability_choices(tm)
    assert trt_build.set_compute_capability(tm, config, "8.9") == "8.9"
    assert config.num_compute_capabilities == 1
    assert config.get_compute_capability(0) == tm.trt.ComputeCapability.SM89
    with pytest.raises(TrtCompatError, match="valid choices"):
        trt_build.set_compute_capability(tm, config, "9.0")
    with pytest.raises(ValueError, match="severity"):
        trt_compat.make_logger(tm, "loud")
