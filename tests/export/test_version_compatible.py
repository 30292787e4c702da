"""`python -m export.to_trt --version-compatible [--exclude-lean-runtime]`: the builder flags (full TensorRT only),
the engine report's fields and cache key, and the runtime reading that report (which flavours may load the engine).
Full TensorRT cannot be installed here, so the flag plumbing runs on the labelled fake of tests/fakes.py (its flag
names are checked against the real modules in tests/runtime/test_trt_api_names.py); the TensorRT-RTX refusal runs on
the real tensorrt_rtx in tests/export/test_export_trt.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import make_fake_tensorrt  # a labelled fake of the tensorrt module's enums, flags and builder config

from export import engine_build, engine_cache, to_trt, trt_build
from export.engine_build import BuildOptions, GraphFacts, Request
from export.errors import EngineBuildError
from export.trt_build import TrtCompatError
from runtime.backends.engine_report import check_engine_runtime, plan_holds_host_code, runtime_flavours
from runtime.errors import RuntimeInputError
from runtime.trt_compat import TrtModule

VERSION = "11.4.0.106"


def full_trt(version: str = VERSION) -> TrtModule:
    return TrtModule(trt=make_fake_tensorrt(version, fp16_flag=False), flavour="tensorrt",
                     version=tuple(int(v) for v in version.split(".")))


def request(options: BuildOptions, tm: TrtModule | None = None) -> Request:
    graph = GraphFacts(Path("model.onnx"), b"graph bytes", None, {"graph": "model"}, "fp16", {"any": True})
    resolved = [{"frames": ([1, 1, 3, 16, 16], [1, 8, 3, 16, 16], [2, 16, 3, 16, 16])}]
    req = Request(graph, Path("model.engine"), Path("model.engine.json"), options,
                  [{"batch": (1, 1, 2), "time": (1, 8, 16)}], resolved, tm or full_trt(),
                  {"kind": "gpu", "name": "NVIDIA H200", "compute_capability": "9.0"})
    engine_build._key_request(req)
    return req


def report_of(req: Request) -> dict:
    return engine_build._make_report(req, b"plan", 1.0, {"io_tensors": [], "layers": []},
                                     {"available": False, "reason": "no GPU"}, {}, {})


def test_builder_flags_set_in_order_on_full_tensorrt():
    tm = full_trt()
    flag = tm.trt.BuilderFlag
    for vc, exclude, want in ((False, False, []), (True, False, [flag.VERSION_COMPATIBLE]),
                              (True, True, [flag.VERSION_COMPATIBLE, flag.EXCLUDE_LEAN_RUNTIME])):
        req = request(BuildOptions(version_compatible=vc, exclude_lean_runtime=exclude), tm)
        config = engine_build._builder_config(req, tm.trt.Builder())
        assert config.flags_set == want  # VERSION_COMPATIBLE first: TensorRT refuses EXCLUDE_LEAN_RUNTIME before it
    with pytest.raises(TrtCompatError, match="--exclude-lean-runtime needs --version-compatible"):
        trt_build.version_compatible_flags(tm, False, True)


def test_report_records_both_flags_and_the_runtime_reads_them():
    plain, vc, small = (request(BuildOptions(version_compatible=v, exclude_lean_runtime=e))
                        for v, e in ((False, False), (True, False), (True, True)))
    reports = [report_of(r) for r in (plain, vc, small)]
    assert [(r["trt"]["version_compatible"], r["trt"]["exclude_lean_runtime"]) for r in reports] == [
        (False, False), (True, False), (True, True)]
    assert "TensorRT lean runtime" in reports[1]["runs_on"] and "later 11.x" in reports[1]["runs_on"]
    assert f"TensorRT lean runtime {VERSION}" in reports[2]["runs_on"]
    assert "same TensorRT version" in reports[0]["runs_on"]
    # Three requests, three cache keys; the plain one keyed exactly as before the option existed, so engines built
    # earlier are still this request's cached engine (not "another request" that needs --force).
    assert len({r.key for r in (plain, vc, small)}) == 3
    assert plain.key == engine_cache.cache_key(
        schema=engine_cache.CACHE_SCHEMA, onnx_sha256=plain.graph.sha256, profiles=plain.resolved,
        precision="fp16", half_usage={"any": True}, flavour="tensorrt", version=VERSION, target=plain.target,
        options={"workspace_mb": None, "opt_level": None, "strongly_typed": True, "tf32": False})
    # The runtime's reading of these reports: who may load each, host code, and the lean runtime's refusal.
    assert all(runtime_flavours(r) == ("tensorrt", "tensorrt_lean_bindings") for r in reports)
    assert [plan_holds_host_code(r) for r in reports] == [False, True, False]
    for r in reports[1:]:
        check_engine_runtime(r, "tensorrt_lean_bindings", VERSION)
    with pytest.raises(RuntimeInputError, match="runs only version-compatible engines.*--version-compatible"):
        check_engine_runtime(reports[0], "tensorrt_lean_bindings", VERSION)


def test_version_compatible_refused_on_tensorrt_rtx_and_the_lean_runtime_cannot_build():
    rtx = TrtModule(trt=make_fake_tensorrt("1.7.1.116"), flavour="tensorrt_rtx", version=(1, 7, 1, 116))
    with pytest.raises(TrtCompatError, match="full TensorRT option: TensorRT-RTX 1.7.1.116 has no version-compatible"):
        trt_build.version_compatible_flags(rtx, True, False)
    assert trt_build.version_compatible_flags(rtx, False, False) == []
    with pytest.raises(EngineBuildError, match="cannot build engines .*lean runtime only runs them"):
        engine_build._import_flavour("tensorrt_lean_bindings", BuildOptions())


def test_cli_flags_reach_build_engine(monkeypatch, tmp_path, capsys):
    got = {}

    def fake_build(onnx, out, **kwargs):  # the CLI is thin: it passes the flags on
        got.update(kwargs)
        raise EngineBuildError("stop here")

    monkeypatch.setattr(to_trt, "build_engine", fake_build)
    assert to_trt.main(["m.onnx", "--out", str(tmp_path / "m.engine"), "--version-compatible",
                        "--exclude-lean-runtime"]) == 2
    assert got["version_compatible"] is True and got["exclude_lean_runtime"] is True
    assert to_trt.main(["m.onnx", "--out", str(tmp_path / "m.engine")]) == 2
    assert got["version_compatible"] is False and got["exclude_lean_runtime"] is False
    assert "stop here" in capsys.readouterr().err
