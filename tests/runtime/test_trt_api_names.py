"""The TensorRT runner against the real TensorRT 11 API: every TensorRT name the runtime uses (collected from its
source by tests/trt_api_names.py, not from a hand list) exists in the real ``tensorrt_lean_bindings`` (TensorRT 11.4's
runtime API) and in ``tensorrt_rtx``, wherever the runtime uses it on that flavour; the checker catches a name
TensorRT 11 removed; and the labelled fakes of tests/fakes.py fake only names the runtime uses and the real modules
have."""

from __future__ import annotations

import enum
import inspect
import textwrap

import fakes
import pytest
from trt_api_names import ALL, Collector, by_name, collect_runtime_uses, lookup, missing, real_modules

MODULES = real_modules()
LEAN, RTX = "tensorrt_lean_bindings", "tensorrt_rtx"
needs_both = pytest.mark.skipif(not {LEAN, RTX} <= set(MODULES),
                                reason="needs the real tensorrt_lean_bindings and tensorrt_rtx (`make venv` installs "
                                       "the trt-lean and trt-rtx extras)")


@pytest.fixture(scope="module")
def uses():
    return collect_runtime_uses(MODULES)


@needs_both
def test_every_tensorrt_name_the_runtime_uses_exists_where_it_is_used(uses):
    names = by_name(uses)
    files = {u.where.split(":")[0] for u in uses}
    # The collector reaches both halves: the seam (logger, import) and the backend (runtime, engine, context).
    assert {"runtime/trt_compat.py", "runtime/backends/tensorrt.py"} <= files
    assert {n.split(".")[0] for n in names} >= {"Runtime", "ICudaEngine", "IExecutionContext", "Logger"}
    assert missing(uses, MODULES) == []
    # Flavour scoping: what the runner does only on TensorRT-RTX is absent from the lean runtime, and checked only
    # against tensorrt_rtx.
    rtx_only = {n for n, (fl, _opt, _w) in names.items() if fl == {RTX}}
    assert rtx_only and all(lookup(MODULES[RTX], n) is not None for n in rtx_only)
    assert any(lookup(MODULES[LEAN], n) is None for n in rtx_only)


@needs_both
def test_the_checker_catches_a_name_tensorrt_11_removed_and_scopes_flavours():
    # A runner written against the pre-10 binding API, beside an RTX-only branch and a version probe.
    source = textwrap.dedent("""
        class Runner:
            def load(self, blob):
                trt = self.tm.trt
                self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
                self.engine = self._runtime.deserialize_cuda_engine(blob)
                slots = self.engine.num_bindings
                index = self.engine.get_binding_index("frames")
                if not self.tm.is_rtx:
                    return self.engine.create_execution_context()
                config = self.engine.create_runtime_config()
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
                return self.engine.create_execution_context(runtime_config=config)

            def run(self, bindings, stream):
                context = self.load(b"")
                context.execute_async_v2(bindings, stream)
                if hasattr(self.tm.trt.BuilderFlag, "FP16"):
                    pass
        """)
    got = Collector(MODULES).collect(source, "old_runner.py")
    gone = {(name, flavour) for name, flavour, _where in missing(got, MODULES)}
    assert {("ICudaEngine.num_bindings", LEAN), ("ICudaEngine.get_binding_index", LEAN),
            ("IExecutionContext.execute_async_v2", LEAN)} <= gone
    assert ("IExecutionContext.execute_async_v2", RTX) in gone  # through load()'s return type on both flavours
    names = by_name(got)
    assert names["CudaGraphStrategy.WHOLE_GRAPH_CAPTURE"][0] == {RTX}  # after the early return: RTX only
    assert names["ICudaEngine.create_execution_context"][0] == ALL
    assert names["BuilderFlag.FP16"][1]  # a hasattr probe is optional: absent in TensorRT 11, not an error
    assert not any(name.startswith(("CudaGraphStrategy", "BuilderFlag")) for name, _f, _w in missing(got, MODULES))


@needs_both
def test_an_annotation_naming_a_tensorrt_class_types_what_it_annotates():
    # A loader in one module hands the engine to a runner in another: the annotations carry its type across.
    source = textwrap.dedent("""
        def load(engine: ICudaEngine, name: str):
            return engine.num_bindings, engine.get_tensor_name(0), name.upper()

        class Runner:
            def __init__(self, loaded):
                self.engine: "trt.ICudaEngine" = loaded.engine

            def run(self):
                context = self.engine.create_execution_context()
                context.execute_async_v2([], 0)
        """)
    got = Collector(MODULES).collect(source, "split_runner.py")
    gone = {(name, flavour) for name, flavour, _where in missing(got, MODULES)}
    assert {("ICudaEngine.num_bindings", LEAN), ("IExecutionContext.execute_async_v2", LEAN)} <= gone
    assert {"ICudaEngine.get_tensor_name", "ICudaEngine.create_execution_context"} <= set(by_name(got))
    assert not any(name.startswith("str") for name in by_name(got))  # other annotations type nothing


def _fake_surface() -> dict:
    """{dotted real name: where it is faked} for every public name the labelled fake TensorRT classes define."""
    out = {}
    for cls_name, cls in vars(fakes).items():
        real = getattr(cls, "REAL", None) if isinstance(cls, type) else None
        if real is None:
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_") or attr == "REAL":
                continue
            name = f"{real}.{attr}" if real else attr
            out[name] = f"{cls_name}.{attr}"
            if inspect.isclass(value):  # a nested stand-in (FakeTensorRT.DataType): its members are faked too
                members = value.__members__ if issubclass(value, enum.Enum) else {
                    k: v for k, v in vars(value).items() if not k.startswith("_")}
                out.update({f"{name}.{m}": f"{cls_name}.{attr}.{m}" for m in members})
    return out


@needs_both
def test_the_fakes_fake_only_names_the_runtime_uses_and_the_real_modules_have(uses):
    names = by_name(uses)
    surface = _fake_surface()
    assert {"Runtime.deserialize_cuda_engine", "ICudaEngine.get_tensor_profile_shape",
            "IExecutionContext.execute_async_v3", "DataType.HALF"} <= set(surface)  # the surface is read
    problems = []
    for name, faked_at in sorted(surface.items()):
        owner = name.rsplit(".", 1)[0] if "." in name else name
        # A name the runtime uses on some flavours; an enum member the runtime never names (TensorIOMode.OUTPUT)
        # counts where its enum is used.
        flavours = names[name][0] if name in names else frozenset().union(
            *(fl for n, (fl, _o, _w) in names.items() if n == owner or n.startswith(owner + ".")))
        if not flavours:
            problems.append(f"{faked_at} fakes {name}, which the runtime never uses")
        for flavour in sorted(flavours & set(MODULES)):
            if lookup(MODULES[flavour], name) is None:
                problems.append(f"{faked_at} fakes {name}, which the real {flavour} lacks")
    assert problems == []


@needs_both
def test_the_build_glue_fake_of_tensorrt_11_names_real_builder_flags():
    # The builder flags make_fake_tensorrt fakes for 11.x (TF32, VERSION_COMPATIBLE, EXCLUDE_LEAN_RUNTIME) are real in
    # both modules; its network-creation flags are full TensorRT 11's, which cannot be installed here.
    fake = fakes.make_fake_tensorrt("11.4.0.106", fp16_flag=False)
    for module in (MODULES[LEAN], MODULES[RTX]):
        assert set(fake.BuilderFlag.__members__) <= set(module.BuilderFlag.__members__), module.__name__
