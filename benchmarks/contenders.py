"""The contenders: every one registered in :data:`CONTENDER_TABLE`, name -> a function that builds it for one
(workload, B, T) through the runtime's public API (``runtime.load``, ``runtime.StreamingClassifier``);
:func:`prepare_contender` builds one.

Nothing here imports torch, onnxruntime or the runtime at module level, so ``benchmarks.report`` stays cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

from benchmarks.context import BenchContext, Prepared, eager_call
from benchmarks.environment import Unavailable
from benchmarks.streams import EagerStream, runtime_stream
from benchmarks.workloads import check_workload

BASELINE = "eager-fp32"
# Variants of the runtime's fast path, named "runtime-fast+VARIANT[+VARIANT...]": runtime.load options on top of
# fast=True, so that one run compares the settings the runner offers (which is fastest differs by GPU and shape).
FAST_VARIANTS = {
    "fp16-all": {"precision": "fp16-all"},  # BiLSTM and heads in fp16 too (cuDNN's persistent fp16 RNN kernels)
}


# Cache keys of the runners the contenders build, one frozen dataclass per kind: they share BenchContext's runner dict,
# and unlike tuples, keys of two kinds never compare equal.
@dataclass(frozen=True)
class FastKey:
    contender: str
    workload: str


@dataclass(frozen=True)
class CompiledKey:
    batch: int
    time_steps: int


@dataclass(frozen=True)
class OrtKey:
    precision: str
    graph: str
    openvino: Optional[str]


@dataclass(frozen=True)
class EngineRunnerKey:
    graph: str


def _torch_timer(ctx: BenchContext) -> str:
    return "cuda-events" if ctx.is_cuda else "perf-counter"


def _torch_precision(ctx: BenchContext, half: bool) -> str:
    import torch

    if half:
        return "fp16"
    return "tf32" if ctx.is_cuda and torch.backends.cudnn.allow_tf32 else "fp32"


def _eager(ctx: BenchContext, name: str, workload: str, batch: int, time_steps: int, *, half: bool) -> Prepared:
    import torch

    if half and not ctx.is_cuda:
        raise Unavailable("eager fp16 needs CUDA (fp16 convolutions on CPU are not a deployment path)")
    model = ctx.model_fp16 if half else ctx.model
    if workload == "stream":
        step = EagerStream(model, ctx.window, batch, ctx.config.feature_dim, ctx.device, half)
        fn = step.push
        pool = ctx.torch_pool("stream", batch, 1)
        seq = [torch.from_numpy(f).to(ctx.device) for f in ctx.stream_sequence(batch)]

        def probe():
            step.reset()
            out = None
            for f in seq:
                out = step.push(f)
            return out
    else:
        def fn(x):
            with torch.inference_mode():
                if half:
                    x = x.half()  # same interface as every contender: float32 in, float32 out
                return {k: v.float() for k, v in eager_call(model, workload, x).items()}

        pool = ctx.torch_pool(workload, batch, time_steps)

        def probe():
            return fn(pool[0])
    return Prepared(fn=fn, inputs=pool, timer=_torch_timer(ctx), precision=_torch_precision(ctx, half), probe=probe,
                    info={"note": "channels_last fp16 copy of the model" if half else "the baseline"})


def _compiled(ctx: BenchContext, name: str, workload: str, batch: int, time_steps: int) -> Prepared:
    import torch

    if workload != "model":
        raise Unavailable("torch.compile is benchmarked on the whole model only (it compiles per shape)")
    compiled = ctx.runner(CompiledKey(batch, time_steps),
                          lambda: torch.compile(ctx.model, mode=ctx.compile_mode, dynamic=False))

    def fn(x):
        with torch.inference_mode():
            return eager_call(compiled, "model", x)

    pool = ctx.torch_pool(workload, batch, time_steps)
    return Prepared(fn=fn, inputs=pool, timer=_torch_timer(ctx), precision=_torch_precision(ctx, False),
                    probe=lambda: fn(pool[0]), info={"note": f"torch.compile mode={ctx.compile_mode}, fp32 weights"})


def _activated(runner):
    runner.activate()
    return runner


def _runtime_fast(ctx: BenchContext, name: str, workload: str, batch: int, time_steps: int, **options) -> Prepared:
    from runtime.backends import load

    if not ctx.is_cuda:
        raise Unavailable("the runtime's PyTorch fast path (fp16 CNN, CUDA graphs) needs CUDA")
    precision = "fp16" if options.get("precision") == "fp16-all" else "fp16-cnn"
    note = "runtime.load(.pt, fast=True" + "".join(f", {k}={v!r}" for k, v in options.items()) + ")"
    if workload == "stream":
        return runtime_stream(ctx, name, batch, loader=lambda stage: load(
            ctx.checkpoint, device=ctx.device, stage=stage, fast=True, **options), precision=precision)
    runner = ctx.runner(FastKey(name, workload), lambda: _activated(load(
        ctx.checkpoint, device=ctx.device, stage=workload, fast=True, **options)))
    pool = ctx.torch_pool(workload, batch, time_steps)
    info = {"backend": runner.backend_name, "note": note}
    return Prepared(fn=runner.infer, inputs=pool, timer="cuda-events", precision=precision,
                    probe=lambda: runner.infer(pool[0]), info=info)


def ort_providers(ctx: BenchContext) -> list[str]:
    """The ONNX Runtime providers of the plain ONNX Runtime contenders: CUDA first when there is one on a GPU run.

    Raises:
        Unavailable: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Unavailable("onnxruntime is not installed") from e
    if ctx.is_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_options(ctx: BenchContext, openvino: Optional[str]) -> dict:
    """``runtime.load`` options of an ONNX Runtime contender (``openvino``: OpenVINO's inference precision)."""
    if openvino is None:
        return {"providers": ort_providers(ctx)}
    return {"providers": ["OpenVINOExecutionProvider"], "openvino_precision": openvino}


def _ort_unavailable(ctx: BenchContext, precision: str, openvino: Optional[str], workload: str) -> Optional[str]:
    """Why an ONNX Runtime contender cannot run this workload here, or None."""
    from runtime.backends.openvino import openvino_unavailable_reason

    if openvino is not None:
        if ctx.is_cuda:
            return "the OpenVINO contenders are CPU contenders; this run is on a GPU"
        reason = openvino_unavailable_reason()
        if reason:
            return f"OpenVINO cannot run here: {reason}"
    if precision == "int8":
        if ctx.is_cuda:
            return "int8 graphs are for ONNX Runtime on CPUs; on a GPU the fp16 contenders apply"
        if workload == "bilstm":
            return "int8 quantizes the CNN only; bilstm.onnx of the int8 export is the fp32 graph"
    if openvino is not None and workload == "bilstm":
        return ("the BiLSTM never runs on OpenVINO (its LSTM ignores sequence_lens in reverse); bilstm.onnx runs on "
                "the CPU EP, as ort-fp32 times it")
    return None


def _ort(ctx: BenchContext, name: str, workload: str, batch: int, time_steps: int, *, precision: str,
         openvino: Optional[str] = None) -> Prepared:
    from runtime.backends import load
    from runtime.backends.ort_providers import GPU_PROVIDERS

    ort_providers(ctx)  # Unavailable without onnxruntime, for every ONNX Runtime contender
    reason = _ort_unavailable(ctx, precision, openvino, workload)
    if reason:
        raise Unavailable(reason)
    options = ort_options(ctx, openvino)
    info = {"intra_op_threads": ctx.ort_threads}
    if openvino is not None:
        info["openvino_precision"] = openvino
    external_int8 = precision == "int8" and ctx.artifacts.int8_external
    if external_int8:
        info.update(ctx.artifacts.int8_gate)
    on_gpu = options["providers"][0] in GPU_PROVIDERS
    if precision == "fp16" and not on_gpu:
        raise Unavailable("fp16 ONNX graphs need a GPU execution provider; only CPUExecutionProvider is here")
    if ctx.is_cuda and not on_gpu and (batch > 1 or time_steps > 16):
        raise Unavailable("ONNX Runtime has only the CPU provider on this GPU machine; it is timed at B=1, "
                          "T<=16 only, as a reference point, to keep the GPU run short")
    label = "bf16" if openvino == "bf16" else "int8-data" if external_int8 else precision
    if workload == "stream":
        # allow_spinning=False: what StreamingClassifier(export_dir) sets for its two alternating sessions.
        return runtime_stream(ctx, name, batch, loader=lambda stage: load(
            ctx.artifacts.onnx_dir(precision) / f"{stage}.onnx", intra_op_threads=ctx.ort_threads,
            allow_spinning=False, **options), precision=label, numpy_inputs=not on_gpu, info=info)
    runner = ctx.runner(OrtKey(precision, workload, openvino), lambda: _activated(load(
        ctx.artifacts.onnx_dir(precision) / f"{workload}.onnx", intra_op_threads=ctx.ort_threads, **options)))
    info["provider"] = runner.provider
    info["stage_providers"] = ", ".join(f"{k}: {v}" for k, v in runner.stage_providers.items())
    pool = ctx.host_pool(workload, batch, time_steps)
    return Prepared(fn=runner.infer, inputs=pool, timer="perf-counter", precision=label,
                    probe=lambda: runner.infer(pool[0]), sync=ctx.sync(), info=info)


def _trt(ctx: BenchContext, name: str, workload: str, batch: int, time_steps: int) -> Prepared:
    from benchmarks.environment import device_name, tensorrt_version
    from runtime.backends import load

    if not ctx.is_cuda:
        raise Unavailable("TensorRT engines need an NVIDIA GPU; this run is on CPU")
    flavour = tensorrt_version()
    if flavour == "not installed":
        raise Unavailable("TensorRT is not installed (neither tensorrt nor tensorrt_rtx imports)")
    if flavour.startswith("tensorrt_rtx"):
        import torch

        cc = torch.cuda.get_device_capability(torch.device(ctx.device))
        if cc[0] == 9 or cc < (8, 6):
            raise Unavailable(f"TensorRT for RTX does not run on compute capability {cc[0]}.{cc[1]} "
                              f"({device_name(ctx.device)}); full TensorRT is not installed")
    if workload == "stream":  # before any engine is built for it
        raise Unavailable("streaming over TensorRT engines is not benchmarked yet")
    runner = ctx.runner(EngineRunnerKey(workload), lambda: _activated(load(ctx.artifacts.engine(workload))))
    pool = ctx.torch_pool(workload, batch, time_steps)
    return Prepared(fn=runner.infer, inputs=pool, timer="perf-counter", precision="fp16-cnn", sync=ctx.sync(),
                    probe=lambda: runner.infer(pool[0]), info={"note": flavour})


# Every contender, in table order; the first is the baseline every speedup is measured against. Each entry builds
# the contender for (ctx, name, workload, batch, time_steps) and raises Unavailable when it cannot run here.
CONTENDER_TABLE: dict[str, Callable[..., Prepared]] = {
    "eager-fp32": functools.partial(_eager, half=False),
    "eager-fp16": functools.partial(_eager, half=True),
    "runtime-fast": _runtime_fast,
    "ort-fp32": functools.partial(_ort, precision="fp32"),
    "ort-fp16": functools.partial(_ort, precision="fp16"),
    "ort-int8": functools.partial(_ort, precision="int8"),
    "ort-openvino-fp32": functools.partial(_ort, precision="fp32", openvino="f32"),
    "ort-openvino-bf16": functools.partial(_ort, precision="fp32", openvino="bf16"),
    "ort-openvino-int8": functools.partial(_ort, precision="int8", openvino="f32"),
    "trt": _trt,
    "torch-compile": _compiled,
}
CONTENDERS = tuple(CONTENDER_TABLE)
# ONNX Runtime contenders: the export they run (precision) and, for OpenVINO (CPU only), its inference precision.
ORT_CONTENDERS = {name: (build.keywords["precision"], build.keywords.get("openvino"))
                  for name, build in CONTENDER_TABLE.items()
                  if isinstance(build, functools.partial) and build.func is _ort}


def parse_contender(name: str) -> tuple[str, dict]:
    """``"runtime-fast+fp16-all"`` -> ``("runtime-fast", {"precision": "fp16-all"})``.

    Raises:
        ValueError: an unknown contender or variant, a variant of another contender, or one given twice.
    """
    base, *variants = str(name).split("+")
    if base not in CONTENDERS:
        raise ValueError(f"unknown contender {name!r}; valid: {', '.join(CONTENDERS)} (runtime-fast also as "
                         f"runtime-fast+VARIANT with VARIANT in {', '.join(FAST_VARIANTS)})")
    if variants and base != "runtime-fast":
        raise ValueError(f"{name!r}: only runtime-fast takes +variants ({', '.join(FAST_VARIANTS)})")
    options: dict = {}
    for variant in variants:
        if variant not in FAST_VARIANTS:
            raise ValueError(f"{name!r}: unknown variant {variant!r}; valid: {', '.join(FAST_VARIANTS)}")
        clash = set(options) & set(FAST_VARIANTS[variant])
        if clash:
            raise ValueError(f"{name!r}: {variant!r} sets {sorted(clash)} a second time")
        options.update(FAST_VARIANTS[variant])
    return base, options


def prepare_contender(ctx: BenchContext, contender: str, workload: str, batch: int, time_steps: int) -> Prepared:
    """Build a contender (a name of :data:`CONTENDERS`, or ``runtime-fast+VARIANT...``) for one shape.

    Raises:
        Unavailable: the contender cannot run here (the message says why).
        ValueError: unknown contender or workload.
    """
    check_workload(workload)
    base, options = parse_contender(contender)
    return CONTENDER_TABLE[base](ctx, contender, workload, batch, time_steps, **options)
