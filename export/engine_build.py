"""The steps of one engine build (:func:`export.to_trt.build_engine`), each a short function: validate the request,
read the graph and its metadata, resolve profiles, key the cache and look it up, then parse, configure (TF32,
profiles, timing cache), build, check the precision, inspect the engine, and write the report and the engine."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

from export import engine_cache
from export.errors import EngineBuildError, OnnxParseError, PrecisionCheckError, ProfileError
from export.spec import SPEC
from export.trt_inspect import (
    check_engine_precision,
    check_network_precision,
    graph_half_usage,
    inspect_network,
    parser_errors,
    summarize_layers,
    try_engine_inspection,
)
from export.trt_profiles import check_network_volumes, onnx_inputs, parse_profile, refuse_inconsistent, resolve_profile
from runtime._io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from runtime._version import __version__
from runtime.trt_compat import TrtModule

# The cache-hit and build messages are the CLI's: they keep its logger name.
logger = logging.getLogger("export.to_trt")


@dataclass
class BuildResult:
    """What :func:`build_engine` produced.

    Attributes:
        engine_path (Path): the serialized engine.
        report_path (Path): ``engine_path + ".json"``.
        report (dict): the engine report (also in ``report_path``).
        cache_hit (bool): True when an existing engine with the same cache key was reused (no build).
    """

    engine_path: Path
    report_path: Path
    report: dict = field(default_factory=dict)
    cache_hit: bool = False


@dataclass
class BuildOptions:
    """The builder options of one request, as :func:`build_engine` takes them."""

    workspace_mb: Optional[int] = None
    opt_level: Optional[int] = None
    compute_capability: Optional[str] = None
    tf32: bool = False
    timing_cache: Optional[Path] = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False


@dataclass
class GraphFacts:
    """What the ONNX graph is: its bytes and digest, parsed proto, export metadata, precision and float16 use."""

    path: Path
    data: bytes
    proto: object
    metadata: Optional[dict]
    precision: str
    half_usage: dict

    @cached_property
    def sha256(self) -> str:
        return sha256_bytes(self.data)


@dataclass
class Request:
    """One build request, fully resolved: graph, profiles, flavour, target, and its cache key."""

    graph: GraphFacts
    out_path: Path
    report_path: Path
    options: BuildOptions
    parsed: list
    resolved: list
    tm: TrtModule
    target: dict
    key: str = ""
    summary: dict = field(default_factory=dict)  # the parts a refusal names when they differ from the old report




def _validate_request(onnx_path: Path, out_path: Path, options: BuildOptions, rebuild, force) -> Path:
    """Options and output paths, checked before any work; returns the report path."""
    from runtime.inputs import check_flag

    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file not found: {onnx_path}")
    if options.opt_level is not None and not 0 <= int(options.opt_level) <= 5:
        raise EngineBuildError(f"opt_level must be in 0..5, got {options.opt_level}")
    if options.workspace_mb is not None and int(options.workspace_mb) < 1:
        raise EngineBuildError(f"workspace_mb must be >= 1, got {options.workspace_mb}")
    for flag, name in ((options.tf32, "tf32"), (options.version_compatible, "version_compatible"),
                       (options.exclude_lean_runtime, "exclude_lean_runtime"), (rebuild, "rebuild"), (force, "force")):
        check_flag(flag, name)
    report_path = Path(str(out_path) + ".json")
    engine_cache.check_output_paths(out_path, report_path, options.timing_cache)
    return report_path


def _read_graph(onnx_path: Path) -> GraphFacts:
    """The graph checked against its export's digest, parsed, with its metadata; int8 graphs are refused."""
    import onnx

    from export.onnx_graph import read_metadata
    from runtime.spec import check_export_file

    try:
        check_export_file(onnx_path)  # a bit flip inside the weights still parses and builds
    except ValueError as e:
        raise EngineBuildError(str(e)) from e
    data = onnx_path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as e:
        raise OnnxParseError(f"{onnx_path} is not a loadable ONNX model: {type(e).__name__}: {e}") from e
    try:
        metadata = read_metadata(proto)
    except ValueError:
        metadata = None
    precision = str((metadata or {}).get("precision") or "unknown")
    if precision == "int8":
        raise PrecisionCheckError(
            f"{onnx_path} is an int8 (QDQ) graph from export.quantize, calibrated and verified for ONNX Runtime on "
            "CPUs; build TensorRT engines from the fp16 export (python -m export.to_onnx CKPT --precision fp16)"
        )
    return GraphFacts(onnx_path, data, proto, metadata, precision, graph_half_usage(proto))


def _resolve_profiles(profiles, proto) -> tuple[list, list]:
    """``--profile`` strings (or dicts) parsed, then mapped onto the graph's inputs."""
    profiles = SPEC.default_profiles if profiles is None else profiles  # an empty list is an error, not the default
    parsed = [parse_profile(p) if isinstance(p, str) else dict(p) for p in profiles]
    if not parsed:
        raise ProfileError("at least one optimisation profile is needed")
    inputs = onnx_inputs(proto)
    return parsed, [resolve_profile(p, inputs) for p in parsed]


def _import_flavour(backend: str, options: BuildOptions) -> TrtModule:
    """The flavour to build with, refused with the reason when it cannot honour the options."""
    from export import trt_build
    from runtime import trt_compat

    if backend not in ("auto",) + trt_compat.BUILD_FLAVOURS:
        raise EngineBuildError(f"--backend {backend} cannot build engines (the TensorRT lean runtime only runs them); "
                               f"valid choices: auto, {', '.join(trt_compat.BUILD_FLAVOURS)}")
    tm = trt_compat.import_trt(backend, order=trt_compat.BUILD_FLAVOURS)
    if options.compute_capability is not None and not tm.is_rtx:
        raise EngineBuildError(
            f"--compute-capability is a TensorRT-RTX option; {tm.describe()} builds for the GPU it runs on"
        )
    try:
        trt_build.version_compatible_flags(tm, options.version_compatible, options.exclude_lean_runtime)
    except trt_build.TrtCompatError as e:
        raise EngineBuildError(str(e)) from e
    return tm


def _key_request(req: Request) -> None:
    """The cache key over everything that shapes the engine, and the parts a refusal to overwrite names."""
    tm, o, sha = req.tm, req.options, req.graph.sha256
    builder_options = {"workspace_mb": o.workspace_mb, "opt_level": o.opt_level, "tf32": bool(o.tf32)}
    if o.version_compatible:  # only when set, so the keys of engines built before the option existed still match
        builder_options.update(version_compatible=True, exclude_lean_runtime=bool(o.exclude_lean_runtime))
    req.key = engine_cache.cache_key(
        schema=engine_cache.CACHE_SCHEMA, onnx_sha256=sha, profiles=req.resolved, precision=req.graph.precision,
        half_usage=req.graph.half_usage, flavour=tm.flavour, version=tm.version_string, target=req.target,
        options={"strongly_typed": True, **builder_options})
    req.summary = {"graph (ONNX sha256)": sha, "profiles": req.resolved, "precision": req.graph.precision,
                   "TensorRT": [tm.flavour, tm.version_string], "target": req.target,
                   "builder options": builder_options}


def cached_result(req: Request, rebuild: bool, force: bool) -> Optional[BuildResult]:
    """The cached engine when it is this request's and intact; raises when ``--out`` may not be replaced."""
    old = engine_cache.check_replace(req.out_path, req.report_path, req.key, req.summary, force)
    if old is None or rebuild or not req.out_path.is_file():
        return None
    if old.get("engine_sha256") == sha256_file(req.out_path):
        logger.info("engine cache hit: %s is up to date (key %s); not rebuilding", req.out_path, req.key[:16])
        return BuildResult(engine_path=req.out_path, report_path=req.report_path, report=old, cache_hit=True)
    logger.warning("%s does not match its report (damaged, or left by an interrupted build); rebuilding it",
                   req.out_path)
    return None


def _parse_network(req: Request):
    """Builder, strongly typed network with the graph parsed into it, and the logger that kept TensorRT's words."""
    from export import trt_build
    from runtime import trt_compat

    trt = req.tm.trt
    trt_logger = trt_compat.make_logger(req.tm, "warning", collect=True)
    builder = trt.Builder(trt_logger)
    network = trt_build.create_network(req.tm, builder)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(req.graph.data, str(req.graph.path)):
        errors = parser_errors(parser, req.graph.proto)
        raise OnnxParseError(f"{req.tm.describe()} could not parse {req.graph.path}:\n  " + "\n  ".join(errors))
    return builder, network, trt_logger


def _builder_config(req: Request, builder):
    """Workspace, optimisation level, compute capability and version compatibility; detailed profiling so the
    inspector names layers."""
    from export import trt_build

    trt, o = req.tm.trt, req.options
    config = builder.create_builder_config()
    if o.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(o.workspace_mb) << 20)
    if o.opt_level is not None:
        config.builder_optimization_level = int(o.opt_level)
    try:
        trt_build.set_compute_capability(req.tm, config, o.compute_capability)
    except trt_build.TrtCompatError as e:
        raise EngineBuildError(str(e)) from e
    for flag in trt_build.version_compatible_flags(req.tm, o.version_compatible, o.exclude_lean_runtime):
        config.set_flag(flag)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    return config


def _apply_tf32(tm: TrtModule, config, tf32: bool):
    """TF32 as asked; returns the flag, or None when this TensorRT has none."""
    tf32_flag = getattr(getattr(tm.trt, "BuilderFlag", None), "TF32", None)
    if tf32_flag is not None:  # on by default in TensorRT 10/11: float32 layers would silently run TF32
        if tf32:
            config.set_flag(tf32_flag)
        else:
            config.clear_flag(tf32_flag)
    return tf32_flag


def _add_profiles(builder, config, resolved: list) -> None:
    for res in resolved:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in res.items():
            prof.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(prof)


def _attach_timing_cache(tm: TrtModule, config, timing_cache) -> tuple:
    """Load ``--timing-cache`` into the config where this flavour uses one; returns (cache or None, report entry)."""
    from export.trt_build import timing_cache_supported

    cache_info = {"path": str(timing_cache) if timing_cache else None, "used": False}
    if timing_cache is None:
        return None, cache_info
    if not timing_cache_supported(tm):
        cache_info["why_not"] = f"{tm.describe()} ignores timing caches (no-op since TensorRT-RTX 1.2)"
        logger.warning("--timing-cache: %s", cache_info["why_not"])
        return None, cache_info
    tc_path = Path(timing_cache)
    blob_in = tc_path.read_bytes() if tc_path.is_file() else b""
    cache = config.create_timing_cache(blob_in)
    if config.set_timing_cache(cache, ignore_mismatch=False) is False:
        # Written by another TensorRT version or GPU: start an empty cache (saved over the old one).
        logger.warning("--timing-cache %s does not match %s or this GPU; starting an empty one", tc_path,
                       tm.describe())
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        cache_info["discarded"] = f"{len(blob_in)} bytes from another TensorRT version or GPU"
        blob_in = b""
    cache_info.update(used=True, loaded_bytes=len(blob_in))
    return cache, cache_info


def _build_plan(req: Request, builder, network, config, trt_logger) -> tuple[bytes, float]:
    """The serialized engine and the seconds the build took; a failed build raises with TensorRT's own errors."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if plan is None:
        errs = trt_logger.errors()
        msg = "; ".join(errs[-5:]) if errs else "no error message from TensorRT"
        hint = " (TensorRT says this GPU/compute capability is unsupported)" if "compute capability" in msg.lower() else ""
        raise EngineBuildError(f"{req.tm.describe()} failed to build {req.graph.path}{hint}: {msg}")
    return bytes(plan), build_s


def _save_timing_cache(cache, timing_cache, cache_info: dict) -> None:
    if cache is not None:
        blob = bytes(cache.serialize())
        atomic_write_bytes(Path(timing_cache), blob)
        cache_info["saved_bytes"] = len(blob)


def _make_report(req: Request, blob: bytes, build_s: float, network_info: dict, engine_info: dict,
                 precision_check: dict, builder_info: dict) -> dict:
    """The engine report (``ENGINE.json``): request, cache key, layers (engine inspector where available) and checks."""
    tm, target, inspected = req.tm, req.target, engine_info["available"]
    return {
        "engine": req.out_path.name,
        "engine_bytes": len(blob),
        "engine_sha256": sha256_bytes(blob),
        "cache_key": req.key,
        "metadata": req.graph.metadata,
        "onnx": {"path": str(req.graph.path), "sha256": req.graph.sha256},
        "precision": req.graph.precision,
        "trt": {"flavour": tm.flavour, "version": tm.version_string, "strongly_typed": True,
                "version_compatible": bool(req.options.version_compatible),
                "exclude_lean_runtime": bool(req.options.exclude_lean_runtime)},
        "target": target,
        "profiles": [{"axes": {k: list(v) for k, v in p.items()}, "shapes": r}
                     for p, r in zip(req.parsed, req.resolved, strict=True)],
        "builder": builder_info,
        "io_tensors": engine_info["io_tensors"] if inspected else network_info["io_tensors"],
        "layers_source": "engine inspector" if inspected else "network definition (engine not deserializable here)",
        "engine_inspection": {"available": inspected, "reason": engine_info.get("reason")},
        "layer_summary": summarize_layers(network_info["layers"]),
        "layers": engine_info["layers"] if inspected else network_info["layers"],
        "precision_check": precision_check,
        "build_seconds": round(build_s, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "package_version": __version__,
        "runs_on": _runs_on(tm, target, req.options),
    }


def _runs_on(tm: TrtModule, target: dict, options: BuildOptions) -> str:
    """Where the engine runs, in words, for the report and the CLI."""
    if tm.is_rtx:
        return f"a GPU TensorRT-RTX supports (compute capability {target['compute_capability']}; not H100/H200)"
    if not options.version_compatible:
        return "the GPU it was built on (same TensorRT version)"
    if options.exclude_lean_runtime:
        return (f"the GPU it was built on, with TensorRT {tm.version_string} or the TensorRT lean runtime "
                f"{tm.version_string} (pip install 'cnn-bilstm-deploy[trt-lean]')")
    return (f"the GPU it was built on, with TensorRT {tm.version_string} or a later {tm.major}.x, or the TensorRT "
            "lean runtime (pip install 'cnn-bilstm-deploy[trt-lean]')")


def prepare_request(onnx_path, out_path, profiles, backend, options: BuildOptions, rebuild, force) -> Request:
    """Validate the request, read the graph and its metadata, resolve profiles and flavour, key the cache."""
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    report_path = _validate_request(onnx_path, out_path, options, rebuild, force)
    graph = _read_graph(onnx_path)
    parsed, resolved = _resolve_profiles(profiles, graph.proto)
    tm = _import_flavour(backend, options)
    req = Request(graph, out_path, report_path, options, parsed, resolved, tm,
                  engine_cache.build_target(tm, options.compute_capability))
    _key_request(req)
    return req


def build_and_write(req: Request) -> BuildResult:
    """Parse, configure, build, check the precision, inspect, then write the report and the engine."""
    builder, network, trt_logger = _parse_network(req)
    if req.tm.is_rtx:  # the tensor volume limit measured with TensorRT-RTX (see export.trt_profiles)
        check_network_volumes(req.parsed, req.resolved, onnx_inputs(req.graph.proto), network)
    config = _builder_config(req, builder)
    tf32_flag = _apply_tf32(req.tm, config, req.options.tf32)
    _add_profiles(builder, config, req.resolved)
    cache, cache_info = _attach_timing_cache(req.tm, config, req.options.timing_cache)
    network_info = inspect_network(req.tm, network)
    blob, build_s = _build_plan(req, builder, network, config, trt_logger)
    refuse_inconsistent(req.tm.describe(), [text for _, text in trt_logger.messages], req.parsed)
    precision_check = check_network_precision(network_info, req.graph.half_usage, req.graph.precision)
    _save_timing_cache(cache, req.options.timing_cache, cache_info)
    o = req.options
    engine_info = try_engine_inspection(req.tm, blob, host_code=o.version_compatible and not o.exclude_lean_runtime)
    check_engine_precision(engine_info, req.graph.half_usage, precision_check)
    builder_info = {"workspace_mb": o.workspace_mb, "opt_level": o.opt_level,
                    "tf32": bool(o.tf32) if tf32_flag is not None else "no TF32 flag in this TensorRT",
                    "timing_cache": cache_info}
    report = _make_report(req, blob, build_s, network_info, engine_info, precision_check, builder_info)
    # The report first: killed before the engine is renamed into place, the report still records this request, so the
    # same command rebuilds without --force (and the runtime refuses the mismatched engine meanwhile).
    atomic_write_json(req.report_path, report)
    atomic_write_bytes(req.out_path, blob)
    logger.info("built %s with %s in %.1f s (%s, %d profiles)", req.out_path, req.tm.describe(), build_s,
                req.graph.precision, len(req.resolved))
    return BuildResult(engine_path=req.out_path, report_path=req.report_path, report=report, cache_hit=False)
