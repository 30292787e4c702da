"""TensorRT-RTX engine builds on CPU (real tensorrt_rtx; no GPU needed to build): parsing and building all three
graphs with several profiles, network inspection, FP16 checks, engine cache, and every error path."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, skip_unless_engines_build

pytestmark = pytest.mark.trt
onnx = pytest.importorskip("onnx")
skip_unless_engines_build("tensorrt_rtx")

from export.errors import OnnxParseError, ProfileError  # noqa: E402
from export.to_onnx import export_onnx  # noqa: E402
from export.to_trt import build_engine, main  # noqa: E402
from export.trt_build import LOOP_LAYER_TYPES  # noqa: E402
from export.trt_profiles import onnx_inputs, parse_profile, resolve_profile  # noqa: E402
from runtime._io import OutputPathError  # noqa: E402
from runtime.trt_compat import TrtNotAvailableError  # noqa: E402

PROFILES = ["batch=1:1:8,time=1:16:128", "batch=8:64:64,time=1:16:32"]


@pytest.fixture(scope="module")
def fp16_graphs(tmp_path_factory, tiny_checkpoint):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx16"), "fp16").paths


@pytest.fixture(scope="module")
def engines(fp16_graphs, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    return {g: build_engine(p, out / f"{g}.engine", profiles=PROFILES, backend="tensorrt_rtx",
                            compute_capability="8.6") for g, p in fp16_graphs.items()}


def _types(report):
    return {layer["type"] for layer in report["layers"]}


def test_all_three_graphs_build_with_dynamic_inputs(engines):
    for graph, res in engines.items():
        assert res.engine_path.stat().st_size > 0 and not res.cache_hit
        report = json.loads(res.report_path.read_text())
        assert report["trt"]["flavour"] == "tensorrt_rtx" and report["target"]["compute_capability"] == "8.6"
        assert report["metadata"]["graph"] == graph and len(report["profiles"]) == 2
        inputs = {t["name"]: t for t in report["io_tensors"] if t["mode"] == "INPUT"}
        main_input = inputs["frames" if graph != "bilstm" else "features"]
        assert main_input["shape"][:2] == [-1, -1]  # dynamic batch and time
        if "lengths" in inputs:
            assert inputs["lengths"]["shape"] == [-1] and inputs["lengths"]["dtype"] == "INT32"
        assert all(t["dtype"] == "FLOAT" for t in report["io_tensors"] if t["name"] != "lengths")
        assert len(report["onnx"]["sha256"]) == 64 and report["build_seconds"] > 0


def test_python_m_export_to_trt_as_a_user_runs_it(fp16_graphs, tmp_path):
    res = run_cli("export.to_trt", fp16_graphs["bilstm"], "--out", "bilstm.engine", "--backend", "tensorrt_rtx",
                  "--profile", "batch=1:1:2,time=1:4:8", "--compute-capability", "8.6", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (tmp_path / "bilstm.engine").stat().st_size > 0 and "built bilstm.engine" in res.stdout, res.stdout
    report = json.loads((tmp_path / "bilstm.engine.json").read_text())
    assert report["trt"]["flavour"] == "tensorrt_rtx" and report["target"]["compute_capability"] == "8.6"
    assert report["metadata"]["graph"] == "bilstm" and len(report["profiles"]) == 1


def test_profiles_mapped_onto_real_inputs(engines):
    report = engines["model"].report
    shapes = report["profiles"][0]["shapes"]
    assert shapes["frames"] == [[1, 1, 3, 16, 16], [1, 16, 3, 16, 16], [8, 128, 3, 16, 16]]
    assert shapes["lengths"] == [[1], [1], [8]]
    assert report["profiles"][1]["shapes"]["frames"][2] == [64, 32, 3, 16, 16]


def test_lstm_becomes_loop_layers_and_fp16_where_asked(engines):
    model, cnn, bilstm = (engines[g].report for g in ("model", "cnn", "bilstm"))
    assert {"RECURRENCE", "ITERATOR", "LOOP_OUTPUT"} <= _types(model)
    assert {"RECURRENCE", "ITERATOR"} <= _types(bilstm)
    assert not _types(cnn) & set(LOOP_LAYER_TYPES)
    for r in (model, cnn):  # fp16 export: the CNN's convolutions run in HALF, the LSTM loop in FLOAT
        convs = [dt for layer in r["layers"] if layer["type"] == "CONVOLUTION" for dt in layer["output_dtypes"]]
        assert convs and set(convs) == {"HALF"}
        assert r["precision_check"]["ok"] and r["precision_check"]["half_layers"] > 0
    assert set(model["precision_check"]["loop_float_dtypes"]) == {"FLOAT"}
    assert bilstm["precision_check"]["half_layers"] == 0  # the fp16 policy keeps the BiLSTM in float32


def test_engine_cache_hit_and_miss(fp16_graphs, engines, caplog):
    res = engines["bilstm"]
    mtime = res.engine_path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="export.to_trt"):
        again = build_engine(fp16_graphs["bilstm"], res.engine_path, profiles=PROFILES, backend="tensorrt_rtx",
                             compute_capability="8.6")
    assert again.cache_hit and res.engine_path.stat().st_mtime_ns == mtime
    assert again.report["cache_key"] == res.report["cache_key"]
    assert "cache hit" in caplog.text
    # Another request (here other profiles) is another engine: it replaces this one only with force=True.
    with pytest.raises(OutputPathError, match="built for another request .profiles differ.; pass --force"):
        build_engine(fp16_graphs["bilstm"], res.engine_path, profiles=PROFILES[:1], backend="tensorrt_rtx",
                     compute_capability="8.6")
    assert res.engine_path.stat().st_mtime_ns == mtime
    changed = build_engine(fp16_graphs["bilstm"], res.engine_path, profiles=PROFILES[:1], backend="tensorrt_rtx",
                           compute_capability="8.6", force=True)
    assert not changed.cache_hit and changed.report["cache_key"] != res.report["cache_key"]
    # TF32 is off unless asked (TensorRT's default is on): another setting is another engine.
    assert res.report["builder"]["tf32"] is False
    tf32 = build_engine(fp16_graphs["bilstm"], res.engine_path, profiles=PROFILES[:1], backend="tensorrt_rtx",
                        compute_capability="8.6", tf32=True, force=True)
    assert not tf32.cache_hit and tf32.report["builder"]["tf32"] is True
    assert tf32.report["cache_key"] != changed.report["cache_key"]


def test_cli_build_and_cache_message(fp16_graphs, tmp_path, capsys):
    out = tmp_path / "cnn.plan"
    args = [str(fp16_graphs["cnn"]), "--out", str(out), "--profile", "batch=1:2:4,time=1:8:16",
            "--compute-capability", "8.9", "--opt-level", "0", "--workspace-mb", "256"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "built" in text and "needs a GPU" in text and (tmp_path / "cnn.plan.json").is_file()
    assert main(args) == 0
    assert "engine cache hit" in capsys.readouterr().out


def test_fp32_graph_built_as_fp32(tiny_checkpoint, tmp_path):
    paths = export_onnx(tiny_checkpoint, tmp_path / "o", "fp32").paths
    r = build_engine(paths["cnn"], tmp_path / "cnn.engine", profiles=["batch=1:1:2,time=1:4:8"],
                     backend="tensorrt_rtx").report
    assert r["precision_check"]["half_layers"] == 0
    assert {"FLOAT"} == {dt for layer in r["layers"] if layer["type"] == "CONVOLUTION"
                         for dt in layer["output_dtypes"]}


def test_missing_flavour_explains_install(fp16_graphs, tmp_path):
    with pytest.raises(TrtNotAvailableError) as info:
        build_engine(fp16_graphs["cnn"], tmp_path / "x.engine", backend="tensorrt")
    msg = str(info.value)
    assert "pip install tensorrt-cu13" in msg and "tensorrt-rtx-cu13" in msg and "GPU" in msg
    assert main([str(fp16_graphs["cnn"]), "--out", str(tmp_path / "y.engine"), "--backend", "tensorrt"]) == 3


@pytest.mark.parametrize("text,match", [
    ("batch=1:8:4,time=1:2:3", "min <= opt <= max"),
    ("batch=1:1", "AXIS=MIN:OPT:MAX"),
    ("channels=1:1:1", "valid axes: batch, time"),
    ("batch=0:1:2", "min must be >= 1"),
    ("batch=1:1:2,batch=1:1:2", "given twice"),
])
def test_bad_profile_strings(text, match):
    with pytest.raises(ProfileError, match=match):
        parse_profile(text)


def test_profile_names_checked_against_graph(fp16_graphs, tmp_path):
    inputs = onnx_inputs(onnx.load(str(fp16_graphs["bilstm"])))
    with pytest.raises(ProfileError, match="does not set") as info:
        resolve_profile({"batch": (1, 1, 2)}, inputs)
    assert "features (batch, time, 512)" in str(info.value) and "lengths (batch)" in str(info.value)
    with pytest.raises(ProfileError, match=r"names \['frames'\].*inputs are features"):
        resolve_profile({"frames": [(1,), (1,), (1,)], "batch": (1, 1, 1), "time": (1, 1, 1)}, inputs)
    with pytest.raises(ProfileError, match="min <= opt <= max"):
        build_engine(fp16_graphs["bilstm"], tmp_path / "e.engine", profiles=["batch=2:1:4,time=1:1:1"],
                     backend="tensorrt_rtx")


def test_parser_failure_names_node(fp16_graphs, tmp_path):
    m = onnx.load(str(fp16_graphs["bilstm"]))
    index = next(i for i, n in enumerate(m.graph.node) if n.op_type == "MatMul")
    m.graph.node[index].op_type = "NoSuchOpXyz"  # a node TensorRT has no importer for
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(m.SerializeToString())
    with pytest.raises(OnnxParseError) as info:
        build_engine(bad, tmp_path / "bad.engine", backend="tensorrt_rtx")
    msg = str(info.value)
    assert f"ONNX node #{index}" in msg and "op='NoSuchOpXyz'" in msg and repr(m.graph.node[index].name) in msg
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(fp16_graphs["cnn"].read_bytes()[:1000])
    with pytest.raises(OnnxParseError, match="not a loadable ONNX model"):
        build_engine(truncated, tmp_path / "t.engine", backend="tensorrt_rtx")


def test_bad_options(fp16_graphs, tmp_path):
    with pytest.raises(ValueError, match="valid choices: .*8.6"):
        build_engine(fp16_graphs["cnn"], tmp_path / "e.engine", backend="tensorrt_rtx", compute_capability="9.9")
    with pytest.raises(ValueError, match="opt_level must be in 0..5"):
        build_engine(fp16_graphs["cnn"], tmp_path / "e.engine", opt_level=7)
    with pytest.raises(ValueError, match="not found"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine")


def test_version_compatible_is_refused_on_tensorrt_rtx_with_the_reason(fp16_graphs, tmp_path, capsys):
    import tensorrt_rtx

    from export.trt_build import create_network
    from runtime.trt_compat import import_trt, make_logger

    out = tmp_path / "vc.engine"
    with pytest.raises(ValueError, match=r"full TensorRT option: TensorRT-RTX [\d.]+ has no version-compatible plans "
                                         r"\(a TensorRT-RTX engine loads only in the TensorRT-RTX release that built "
                                         r"it, and the lean runtime cannot run it\)"):
        build_engine(fp16_graphs["cnn"], out, backend="tensorrt_rtx", version_compatible=True)
    assert main([str(fp16_graphs["cnn"]), "--out", str(out), "--backend", "tensorrt_rtx", "--version-compatible"]) == 2
    assert "has no version-compatible plans" in capsys.readouterr().err and not out.exists()
    # Why it is refused rather than passed on: the flag exists in tensorrt_rtx's enum, but a build with it fails.
    tm = import_trt("tensorrt_rtx")
    builder = tm.trt.Builder(make_logger(tm, "error", collect=True, forward=False))
    network = create_network(tm, builder)
    x = network.add_input("x", tm.trt.float32, (1, 4))
    network.mark_output(network.add_activation(x, tm.trt.ActivationType.RELU).get_output(0))
    config = builder.create_builder_config()
    config.set_flag(tensorrt_rtx.BuilderFlag.VERSION_COMPATIBLE)
    assert builder.build_serialized_network(network, config) is None


# TensorRT-RTX holds at most 2**40 elements in any tensor at a profile's shapes; the tiny model's largest activation
# (conv1's output) has 64x16x16 elements per frame, so batch x time may reach 2**40 / 16384 = 8192 * 8192.
def test_a_profile_beyond_tensorrts_tensor_volume_is_refused_in_one_line(fp16_graphs, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "big.engine"
    proc = subprocess.run([sys.executable, "-m", "export.to_trt", str(fp16_graphs["model"]), "--out", str(out),
                           "--profile", "batch=1:1:100000,time=1:16:100000", "--backend", "tensorrt_rtx",
                           "--compute-capability", "8.6"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: profile 0 (batch=1:1:100000,time=1:16:100000) is not self-consistent for TensorRT: at its largest "
        "shapes (batch x time = 10,000,000,000) tensor /cnn/cnn/conv1/Conv_output_0 [N, 64, 16, 16] would hold "
        "163,840,000,000,000 elements, beyond TensorRT's limit of 1,099,511,627,776 per tensor; keep batch x time at "
        "most 67,108,864"], proc.stderr
    assert not out.exists() and not (tmp_path / "big.engine.json").exists()


def test_the_volume_limit_is_tensorrts_own(fp16_graphs, tmp_path, monkeypatch):
    # exactly 2**40 elements: TensorRT-RTX builds it without a word
    built = build_engine(fp16_graphs["cnn"], tmp_path / "edge.engine", profiles=["batch=1:1:8192,time=1:16:8192"],
                         backend="tensorrt_rtx", compute_capability="8.6")
    assert built.engine_path.is_file()
    with pytest.raises(ProfileError, match=r"profile 0 \(batch=1:1:8192,time=1:16:8193\) is not self-consistent"):
        build_engine(fp16_graphs["cnn"], tmp_path / "over.engine", profiles=["batch=1:1:8192,time=1:16:8193"],
                     backend="tensorrt_rtx", compute_capability="8.6")
    # without the check before the build, the builder's own warning stops it: no engine, no report
    monkeypatch.setattr("export.engine_build.check_network_volumes", lambda *args: None)
    with pytest.raises(ProfileError, match=r"TensorRT-RTX .* found the optimization profiles "
                                           r"batch=1:1:8192,time=1:16:8193 not self-consistent \(Profile kMAX values "
                                           r"are not self-consistent\. .*tensor volume exceeds 1099511627776"):
        build_engine(fp16_graphs["cnn"], tmp_path / "over.engine", profiles=["batch=1:1:8192,time=1:16:8193"],
                     backend="tensorrt_rtx", compute_capability="8.6")
    assert not (tmp_path / "over.engine").exists() and not (tmp_path / "over.engine.json").exists()
