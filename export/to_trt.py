"""Build a TensorRT engine from one of the exported ONNX graphs (full TensorRT 10.x/11.x or TensorRT for RTX).

* The flavour is auto-detected (``--backend auto``: full TensorRT first, then TensorRT-RTX) through the one seam
  :mod:`runtime.trt_compat`; everything else is shared.
* Strongly typed networks only: FP16 comes from the graph's casts (``--precision fp16`` at export). The removed
  weak-typing flags are never used. After the build the network (and, where the engine can be deserialized on this
  machine, the engine inspector) is checked: a graph that asked for float16 must yield HALF layers, else the build
  fails loudly instead of leaving a silent FP32 engine.
* Optimisation profiles are given in terms of ``batch`` and ``time`` and mapped onto each graph's real inputs
  (``frames``/``features``/``lengths``); fixed axes come from the graph.
* Engine cache: a key over the ONNX bytes, profiles, precision, flavour and version, target and builder options is
  stored in the report; an unchanged request reuses the engine ("cache hit"; ``--rebuild`` builds it anew).
* Outputs are checked before the build: ``--out`` ends in ``.engine`` or ``.plan``, and an existing file there is
  replaced only when its report (``OUT.json``) records this very request, i.e. it is this request's cached engine,
  or with ``--force``. A checkpoint, a hand-made file or an engine of another request (another graph, other
  profiles or options) is never overwritten silently. The ONNX graph is checked against its export's digest first.
* The report is written atomically, then the engine next to it (see docs/ARCHITECTURE.md): a run killed between
  the two leaves a report that records this request, so running the same command again rebuilds without --force.

CLI::

    python -m export.to_trt runs/demo/onnx/fp16/model.onnx --out runs/demo/engines/model.engine \\
        --profile batch=1:1:8,time=1:16:128 --profile batch=8:64:64,time=1:16:32 --compute-capability 8.6
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from export.spec import BATCH_AXIS, SPEC, TIME_AXIS
from runtime._io import (
    OutputPathError,
    atomic_write_bytes,
    atomic_write_json,
    check_output_file,
    remove_stale_temporaries,
    sha256_file,
)
from runtime._version import __version__

logger = logging.getLogger(__name__)

PROFILE_AXES = (BATCH_AXIS, TIME_AXIS)
CACHE_SCHEMA = 1
ENGINE_SUFFIXES = (".engine", ".plan")
TIMING_CACHE_SUFFIXES = (".cache",)


class EngineBuildError(ValueError):
    """The engine cannot be built as asked (bad option, parser failure, build failure, lost FP16)."""


class ProfileError(EngineBuildError):
    """A ``--profile`` string is malformed, inconsistent (not min <= opt <= max) or names unknown inputs/axes."""


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected the graph; the message names the ONNX node index, name and op."""


class PrecisionCheckError(EngineBuildError):
    """The built network is not in the precision the graph asked for (e.g. no HALF layer in an fp16 graph)."""


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


# --- profiles ------------------------------------------------------------------------------------------------------


def parse_profile(text: str) -> dict:
    """``"batch=1:1:8,time=1:16:128"`` -> ``{"batch": (1, 1, 8), "time": (1, 16, 128)}``.

    Raises:
        ProfileError: malformed text, non-positive numbers, min <= opt <= max violated, unknown or repeated axis.
    """
    if not isinstance(text, str) or not text.strip():
        raise ProfileError(f"empty profile; expected e.g. {SPEC.default_profiles[0]!r}")
    out = {}
    for part in text.split(","):
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*", part)
        if not m:
            raise ProfileError(
                f"bad profile entry {part.strip()!r} in {text!r}; expected AXIS=MIN:OPT:MAX entries separated by "
                f"commas, e.g. {SPEC.default_profiles[0]!r} (axes: {', '.join(PROFILE_AXES)})"
            )
        name, lo, opt, hi = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if name not in PROFILE_AXES:
            raise ProfileError(
                f"unknown profile axis {name!r} in {text!r}; valid axes: {', '.join(PROFILE_AXES)} (they are mapped "
                "onto the graph inputs: frames/features (batch, time, ...), lengths (batch,))"
            )
        if name in out:
            raise ProfileError(f"axis {name!r} given twice in profile {text!r}")
        if lo < 1:
            raise ProfileError(f"{name} min must be >= 1, got {lo} in {text!r}")
        if not lo <= opt <= hi:
            raise ProfileError(f"{name}={lo}:{opt}:{hi} in {text!r} violates min <= opt <= max")
        out[name] = (lo, opt, hi)
    return out


def onnx_inputs(model_proto) -> dict:
    """Graph inputs as ``{name: [dim, ...]}`` where a dim is an int (fixed) or a str (symbolic name)."""
    inits = {i.name for i in model_proto.graph.initializer}
    out = {}
    for vi in model_proto.graph.input:
        if vi.name in inits:
            continue
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
        out[vi.name] = dims
    return out


def _describe_inputs(inputs: dict) -> str:
    return "; ".join(f"{n} ({', '.join(str(d) for d in dims)})" for n, dims in inputs.items())


def resolve_profile(profile: dict, inputs: dict) -> dict:
    """Map a ``{"batch": (min, opt, max), "time": ...}`` profile onto the graph's inputs.

    Entries may also be given per input name (``{"frames": [(min shape), (opt), (max)]}``) for graphs that do not
    use the ``batch``/``time`` axis names.

    Returns:
        dict: ``{input_name: [min_shape, opt_shape, max_shape]}`` (lists of ints).

    Raises:
        ProfileError: an axis the graph needs is missing, an axis or input name the graph does not have (the message
            lists the real input names and their axes), or a symbolic dim that is neither batch nor time.
    """
    axes_in_graph = {d for dims in inputs.values() for d in dims if isinstance(d, str)}
    unknown = [k for k in profile if k not in PROFILE_AXES and k not in inputs]
    if unknown:
        raise ProfileError(
            f"profile names {unknown} that this graph does not have; its inputs are {_describe_inputs(inputs)} "
            f"and the profile axes are {', '.join(sorted(axes_in_graph & set(PROFILE_AXES)))}"
        )
    unused = [k for k in profile if k in PROFILE_AXES and k not in axes_in_graph]
    if unused:
        raise ProfileError(
            f"profile sets axis {unused} but no input of this graph has it; inputs: {_describe_inputs(inputs)}"
        )
    resolved = {}
    for name, dims in inputs.items():
        if name in profile:  # explicit per-input shapes
            shapes = [list(map(int, s)) for s in profile[name]]
            if len(shapes) != 3 or any(len(s) != len(dims) for s in shapes):
                raise ProfileError(f"input {name!r} needs three shapes of rank {len(dims)} (min, opt, max)")
            resolved[name] = shapes
            continue
        shapes = [[], [], []]
        for d in dims:
            if isinstance(d, int):
                for s in shapes:
                    s.append(d)
            elif d in profile:
                for s, v in zip(shapes, profile[d], strict=True):
                    s.append(int(v))
            else:
                raise ProfileError(
                    f"input {name!r} has dynamic axis {d!r} that the profile does not set; give {d}=MIN:OPT:MAX "
                    f"(inputs: {_describe_inputs(inputs)})"
                )
        resolved[name] = shapes
    for name, (lo, opt, hi) in resolved.items():
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ProfileError(f"input {name!r}: shapes {lo} / {opt} / {hi} violate min <= opt <= max")
    return resolved


# --- helpers ---------------------------------------------------------------------------------------------------------


def _onnx_node_description(model_proto, index: int) -> str:
    nodes = model_proto.graph.node
    if 0 <= index < len(nodes):
        n = nodes[index]
        return f"ONNX node #{index} name={n.name!r} op={n.op_type!r} inputs={list(n.input)}"
    return f"ONNX node #{index} (no such node; the graph has {len(nodes)})"


def _parser_errors(parser, model_proto) -> list:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = int(err.node()) if hasattr(err, "node") else -1
        desc = err.desc() if hasattr(err, "desc") else str(err)
        where = _onnx_node_description(model_proto, node) if node >= 0 else "no ONNX node (graph-level error)"
        out.append(f"{where}: {desc} (code {err.code()})" if hasattr(err, "code") else f"{where}: {desc}")
    return out


def graph_half_usage(model_proto) -> dict:
    """Where the ONNX graph itself asks for float16: ``{"any": bool, "lstm": bool}``.

    This, not the export precision label, is what the built network must honour: ``bilstm.onnx`` of an ``fp16``
    export is all float32 (only the CNN is fp16), while ``fp16-all`` runs the LSTM nodes on float16 weights.
    """
    import onnx

    half = onnx.TensorProto.FLOAT16
    half_inits = {i.name for i in model_proto.graph.initializer if i.data_type == half}
    casts = any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
                for n in model_proto.graph.node)
    lstm = any(n.op_type == "LSTM" and len(n.input) > 1 and n.input[1] in half_inits for n in model_proto.graph.node)
    return {"any": bool(casts or half_inits), "lstm": lstm}


def _target(tm, compute_capability: Optional[str]) -> dict:
    """What the engine is built for: a compute capability (TensorRT-RTX) or the local GPU (full TensorRT)."""
    if tm.is_rtx:
        return {"kind": "compute_capability", "compute_capability": compute_capability or "default"}
    gpu = {"kind": "gpu", "name": "unknown", "compute_capability": "unknown"}
    try:  # cuda-python first: the runtime reads the GPU the same way (a CPU-only torch would say "no GPU")
        from runtime.cuda_mem import CudaApi

        gpu.update(CudaApi().device_info(0))
        return gpu
    except Exception:  # cuda-python missing or no driver: try torch
        pass
    try:
        import torch

        if torch.cuda.is_available():
            gpu["name"] = torch.cuda.get_device_name(0)
            gpu["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    except Exception:  # torch missing or a broken driver: the key then just says "unknown"
        pass
    return gpu


def _cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def inspect_network(tm, network) -> dict:
    """Describe a parsed network: I/O tensors (shape with -1 for dynamic axes), layers with type and output dtypes."""
    from runtime.trt_compat import dtype_name

    def tensor(t, mode):
        return {"name": t.name, "mode": mode, "dtype": dtype_name(t.dtype), "shape": [int(d) for d in t.shape]}

    io = [tensor(network.get_input(i), "INPUT") for i in range(network.num_inputs)]
    io += [tensor(network.get_output(i), "OUTPUT") for i in range(network.num_outputs)]
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        layers.append({
            "name": layer.name,
            "type": layer.type.name,
            "output_dtypes": [dtype_name(o.dtype) for o in outs if o is not None],
        })
    return {"io_tensors": io, "layers": layers}


def summarize_layers(layers: list, dtype_key: str = "output_dtypes") -> dict:
    """``{layer type: {dtype: count}}`` over layers (network inspection form)."""
    out: dict = {}
    for layer in layers:
        for dt in layer.get(dtype_key) or ["NONE"]:
            d = out.setdefault(layer["type"] or "UNKNOWN", {})
            d[dt] = d.get(dt, 0) + 1
    return out


def check_precision(network_info: dict, half_usage: dict, precision: str = "") -> dict:
    """Check the network's layer dtypes match what the graph asked for (:func:`graph_half_usage`).

    Graph with float16: some layers and every convolution output HALF. float16 LSTM (``fp16-all``): the loop layers
    carry HALF too. Graph without float16: no HALF at all. Returns a summary dict; raises
    :class:`PrecisionCheckError` when the check fails.
    """
    from runtime.trt_compat import LOOP_LAYER_TYPES

    layers = network_info["layers"]
    conv = [dt for layer in layers if layer["type"] == "CONVOLUTION" for dt in layer["output_dtypes"]]
    loop_float = [dt for layer in layers if layer["type"] in LOOP_LAYER_TYPES for dt in layer["output_dtypes"]
                  if dt in ("HALF", "FLOAT")]
    half_layers = sum(1 for layer in layers if "HALF" in layer["output_dtypes"])
    summary = {"precision": precision, "graph_asks_half": half_usage["any"], "lstm_half": half_usage["lstm"],
               "half_layers": half_layers, "convolution_dtypes": sorted(set(conv)),
               "loop_float_dtypes": sorted(set(loop_float))}
    if half_usage["any"]:
        if half_layers == 0:
            raise PrecisionCheckError(
                f"the graph asked for {precision} but the strongly typed network has no HALF layer: the engine would "
                "silently run in FP32. Re-export with `python -m export.to_onnx --precision fp16`."
            )
        if conv and set(conv) != {"HALF"}:
            raise PrecisionCheckError(f"{precision} graph, but convolutions output {sorted(set(conv))}, not only HALF")
    if half_usage["lstm"] and "HALF" not in loop_float:
        raise PrecisionCheckError("the graph's LSTM is float16, but the TensorRT loop layers carry no HALF tensor")
    if not half_usage["any"] and half_layers:
        raise PrecisionCheckError(f"the graph is float32, but {half_layers} network layers output HALF")
    summary["ok"] = True
    return summary


def _try_engine_inspection(tm, blob) -> dict:
    """Deserialize the plan and read the engine inspector, where this machine can (a supported GPU)."""
    from runtime.trt_compat import dtype_name, make_logger, normalize_engine_information

    trt = tm.trt
    # Failure is expected without a supported GPU and is reported in the result, so keep TensorRT's errors quiet.
    trt_logger = make_logger(tm, "error", collect=True, forward=False)
    try:
        engine = trt.Runtime(trt_logger).deserialize_cuda_engine(blob)
    except Exception as e:  # some versions raise instead of returning None
        engine, exc = None, f"{type(e).__name__}: {e}"
    else:
        exc = None
    if engine is None:
        msgs = trt_logger.errors() if hasattr(trt_logger, "errors") else []
        reason = exc or ("; ".join(msgs[:3]) if msgs else "deserialize_cuda_engine returned None")
        if "compute capability" in reason.lower():
            reason = f"this GPU is not supported by {tm.describe()}: {reason}"
        return {"available": False, "reason": reason}
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io.append({"name": name, "mode": engine.get_tensor_mode(name).name,
                   "dtype": dtype_name(engine.get_tensor_dtype(name)),
                   "shape": [int(d) for d in engine.get_tensor_shape(name)]})
    inspector = engine.create_engine_inspector()
    info = normalize_engine_information(tm, inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return {"available": True, "io_tensors": io, "layers": info["layers"],
            "num_optimization_profiles": int(engine.num_optimization_profiles)}


# --- build ---------------------------------------------------------------------------------------------------------


_BUILDER_PROBES: dict = {}  # backend -> reason or None, once per process


def builder_unavailable_reason(backend: str = "auto") -> Optional[str]:
    """Why no TensorRT engine can be built on this machine, or None when one can.

    Decided by what the builder really does here, once per process: the flavour must import and build a one-layer
    strongly typed network (0.2 s with TensorRT-RTX on a CPU). A module that imports is not taken to mean a builder
    that works. The demo and the tests skip their engine builds with this reason.
    """
    if backend not in _BUILDER_PROBES:
        _BUILDER_PROBES[backend] = _probe_builder(backend)
    return _BUILDER_PROBES[backend]


def _probe_builder(backend: str) -> Optional[str]:
    from runtime.trt_compat import TrtNotAvailableError, create_network, import_trt, make_logger

    try:
        tm = import_trt(backend)
    except TrtNotAvailableError as e:
        return str(e).splitlines()[0]
    try:
        trt = tm.trt
        builder = trt.Builder(make_logger(tm, "error"))
        network = create_network(tm, builder)
        x = network.add_input("x", trt.float32, (1, 4))
        network.mark_output(network.add_activation(x, trt.ActivationType.RELU).get_output(0))
        blob = builder.build_serialized_network(network, builder.create_builder_config())
    except Exception as e:  # whatever the library raised: the reason is what the caller prints
        return f"{tm.describe()} imports but cannot build a one-layer network here: {type(e).__name__}: {e}"
    if blob is None or not blob.nbytes:
        return f"{tm.describe()} imports but its builder returned no engine for a one-layer network here"
    return None


def _check_output_paths(out_path: Path, report_path: Path, timing_cache) -> None:
    """Before any work: suffixes, no folder where a file goes, writable folders; stale temporaries of killed runs
    removed. Whether an existing file may be replaced is decided once the request is known (:func:`_check_replace`).
    """
    check_output_file(out_path, what="--out", suffixes=ENGINE_SUFFIXES, force=True)
    check_output_file(report_path, what="--out's report", suffixes=(".json",), force=True)
    remove_stale_temporaries(out_path.parent, [out_path.name, report_path.name])
    if timing_cache is not None:  # read, then written back: a checkpoint named here would be replaced
        tc = check_output_file(timing_cache, what="--timing-cache", suffixes=TIMING_CACHE_SUFFIXES, force=True)
        remove_stale_temporaries(tc.parent, [tc.name])


def _read_own_report(report_path: Path, out_path: Path) -> Optional[dict]:
    """The report at ``report_path`` if this tool wrote it for the engine file ``out_path`` (else None)."""
    try:
        old = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(old, dict) or "cache_key" not in old or old.get("engine") != out_path.name:
        return None
    return old


def _request_differences(old: dict, new: dict) -> list:
    """Which parts of the request recorded in ``old`` (a report) differ from ``new`` (same keys as below)."""
    builder = old.get("builder") or {}
    recorded = {
        "graph (ONNX sha256)": (old.get("onnx") or {}).get("sha256"),
        "profiles": [p.get("shapes") for p in old.get("profiles") or [] if isinstance(p, dict)],
        "precision": old.get("precision"),
        "TensorRT": [(old.get("trt") or {}).get(k) for k in ("flavour", "version")],
        "target": old.get("target"),
        "builder options": {k: builder.get(k) for k in ("workspace_mb", "opt_level", "tf32")},
    }
    return [k for k, v in recorded.items() if v != new[k]]


def _check_replace(out_path: Path, report_path: Path, key: str, request: dict, force: bool) -> Optional[dict]:
    """May ``out_path`` and its report be written? Only a file whose report records this very request (its cache
    key: the cached engine, or one a killed build of the same request left) is replaced without ``force``.

    Returns:
        dict | None: the old report when it records this request.

    Raises:
        runtime._io.OutputPathError: an existing file that may not be replaced, saying what it is.
    """
    old = _read_own_report(report_path, out_path)
    own = old is not None and old.get("cache_key") == key
    if out_path.is_file() and old is not None and not own and not force:
        diff = ", ".join(_request_differences(old, request)) or "the cache key"
        raise OutputPathError(f"--out {out_path} holds an engine that export.to_trt built for another request "
                              f"({diff} differ); pass --force to replace it, or choose another --out")
    check_output_file(out_path, what="--out", suffixes=ENGINE_SUFFIXES, force=force, replaceable=lambda p: own)
    # A report without its engine describes nothing; any other JSON there is someone's file.
    check_output_file(report_path, what="--out's report", suffixes=(".json",), force=force,
                      replaceable=lambda p: own or (old is not None and not out_path.exists()))
    return old if own else None


def build_engine(onnx_path, out_path, *, profiles=None, backend: str = "auto", timing_cache=None,
                 workspace_mb: Optional[int] = None, opt_level: Optional[int] = None,
                 compute_capability: Optional[str] = None, tf32: bool = False, rebuild: bool = False,
                 force: bool = False) -> BuildResult:
    """Build (or reuse) a strongly typed TensorRT engine for an exported ONNX graph.

    Args:
        onnx_path (str | PathLike): ``model.onnx``, ``cnn.onnx`` or ``bilstm.onnx`` from :mod:`export.to_onnx`.
        out_path (str | PathLike): engine file; the report goes to ``out_path + ".json"``.
        profiles (list[str | dict] | None): optimisation profiles as ``"batch=1:1:8,time=1:16:128"`` strings or
            parsed dicts. Defaults to ``SPEC.default_profiles`` (low latency + throughput).
        backend (str): "auto", "tensorrt" or "tensorrt_rtx". Defaults to "auto".
        timing_cache (str | PathLike | None): timing cache file, loaded if present and saved after the build (full
            TensorRT; TensorRT-RTX >= 1.2 ignores timing caches and the report says so). Defaults to None.
        workspace_mb (int | None): workspace memory pool limit in MiB. Defaults to None (TensorRT's default).
        opt_level (int | None): builder optimisation level 0..5. Defaults to None (TensorRT's default, 3).
        compute_capability (str | None): TensorRT-RTX target such as "8.6", "8.9", "12.0". Defaults to None.
        tf32 (bool): let float32 layers (the BiLSTM of an fp16 export, all of an fp32 one) use TF32 tensor cores
            (10-bit mantissa). TensorRT turns TF32 on by default; off here, so float32 layers compute what the graph
            says. Defaults to False.
        rebuild (bool): build even when the cached engine at ``out_path`` matches this request. Defaults to False.
        force (bool): replace an existing file at ``out_path`` (and its report) that is not this request's engine:
            an engine of another graph or other profiles or options, or any other file of the right suffix.
            Without it such a file is refused. Defaults to False.

    Returns:
        BuildResult: engine and report paths, the report, and whether the cache was hit.

    Raises:
        runtime.trt_compat.TrtNotAvailableError: the flavour is not installed (says how to install each).
        ProfileError: bad profiles. OnnxParseError: the parser rejected the graph (node index, name, op).
        PrecisionCheckError: the network lost the FP16 the graph asked for, or the graph is an int8 export (those
            are for ONNX Runtime on CPUs; engines are built from the fp16 export).
        EngineBuildError: other bad options, an ONNX graph that differs from the digest its export_report.json
            records, or a failed build (with TensorRT's own error messages).
        runtime._io.OutputPathError: ``out_path`` (or its report or ``timing_cache``) has another suffix, is a folder
            or not writable, or is an existing file that is not this request's engine and ``force`` is False.
    """
    import onnx

    from export.to_onnx import read_metadata
    from runtime import trt_compat
    from runtime.base import check_flag
    from runtime.spec import check_export_file

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file not found: {onnx_path}")
    if opt_level is not None and not 0 <= int(opt_level) <= 5:
        raise EngineBuildError(f"opt_level must be in 0..5, got {opt_level}")
    if workspace_mb is not None and int(workspace_mb) < 1:
        raise EngineBuildError(f"workspace_mb must be >= 1, got {workspace_mb}")
    for flag, name in ((tf32, "tf32"), (rebuild, "rebuild"), (force, "force")):
        check_flag(flag, name)
    report_path = Path(str(out_path) + ".json")
    _check_output_paths(out_path, report_path, timing_cache)
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
    half_usage = graph_half_usage(proto)
    inputs = onnx_inputs(proto)
    profiles = SPEC.default_profiles if profiles is None else profiles  # an empty list is an error, not the default
    parsed = [parse_profile(p) if isinstance(p, str) else dict(p) for p in profiles]
    if not parsed:
        raise ProfileError("at least one optimisation profile is needed")
    resolved = [resolve_profile(p, inputs) for p in parsed]

    tm = trt_compat.import_trt(backend)
    if compute_capability is not None and not tm.is_rtx:
        raise EngineBuildError(
            f"--compute-capability is a TensorRT-RTX option; {tm.describe()} builds for the GPU it runs on"
        )
    target = _target(tm, compute_capability)
    onnx_sha = hashlib.sha256(data).hexdigest()
    key = _cache_key(schema=CACHE_SCHEMA, onnx_sha256=onnx_sha, profiles=resolved, precision=precision,
                     half_usage=half_usage,
                     flavour=tm.flavour, version=tm.version_string, target=target,
                     options={"workspace_mb": workspace_mb, "opt_level": opt_level, "strongly_typed": True,
                              "tf32": bool(tf32)})
    request = {"graph (ONNX sha256)": onnx_sha, "profiles": resolved, "precision": precision,
               "TensorRT": [tm.flavour, tm.version_string], "target": target,
               "builder options": {"workspace_mb": workspace_mb, "opt_level": opt_level, "tf32": bool(tf32)}}
    old = _check_replace(out_path, report_path, key, request, force)
    if old is not None and not rebuild and out_path.is_file():
        if old.get("engine_sha256") == sha256_file(out_path):
            logger.info("engine cache hit: %s is up to date (key %s); not rebuilding", out_path, key[:16])
            return BuildResult(engine_path=out_path, report_path=report_path, report=old, cache_hit=True)
        logger.warning("%s does not match its report (damaged, or left by an interrupted build); rebuilding it",
                       out_path)

    trt = tm.trt
    trt_logger = trt_compat.make_logger(tm, "warning", collect=True)
    builder = trt.Builder(trt_logger)
    network = trt_compat.create_network(tm, builder)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(data, str(onnx_path)):
        errors = _parser_errors(parser, proto)
        raise OnnxParseError(f"{tm.describe()} could not parse {onnx_path}:\n  " + "\n  ".join(errors))

    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    try:
        trt_compat.set_compute_capability(tm, config, compute_capability)
    except trt_compat.TrtCompatError as e:
        raise EngineBuildError(str(e)) from e
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    tf32_flag = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    if tf32_flag is not None:  # on by default in TensorRT 10/11: float32 layers would silently run TF32
        if tf32:
            config.set_flag(tf32_flag)
        else:
            config.clear_flag(tf32_flag)
    for res in resolved:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in res.items():
            prof.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(prof)

    cache_info = {"path": str(timing_cache) if timing_cache else None, "used": False}
    cache = None
    if timing_cache is not None:
        if trt_compat.timing_cache_supported(tm):
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
        else:
            cache_info["why_not"] = f"{tm.describe()} ignores timing caches (no-op since TensorRT-RTX 1.2)"
            logger.warning("--timing-cache: %s", cache_info["why_not"])

    network_info = inspect_network(tm, network)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if plan is None:
        errs = trt_logger.errors()
        msg = "; ".join(errs[-5:]) if errs else "no error message from TensorRT"
        hint = " (TensorRT says this GPU/compute capability is unsupported)" if "compute capability" in msg.lower() else ""
        raise EngineBuildError(f"{tm.describe()} failed to build {onnx_path}{hint}: {msg}")
    blob = bytes(plan)
    precision_check = check_precision(network_info, half_usage, precision)

    if cache is not None:
        atomic_write_bytes(Path(timing_cache), bytes(cache.serialize()))
        cache_info["saved_bytes"] = len(bytes(cache.serialize()))

    engine_info = _try_engine_inspection(tm, blob)
    if engine_info["available"]:
        engine_half = sum(1 for layer in engine_info["layers"] for t in layer["outputs"] if t["dtype"] == "HALF")
        precision_check["engine_half_tensors"] = engine_half
        if half_usage["any"] and engine_half == 0:
            raise PrecisionCheckError("engine inspector shows no HALF tensor although the graph asks for float16: "
                                      "the engine is FP32")
    else:
        logger.info("engine not inspected on this machine (%s); the report uses the network definition",
                    engine_info["reason"])

    report = {
        "engine": out_path.name,
        "engine_bytes": len(blob),
        "engine_sha256": hashlib.sha256(blob).hexdigest(),
        "cache_key": key,
        "metadata": metadata,
        "onnx": {"path": str(onnx_path), "sha256": onnx_sha},
        "precision": precision,
        "trt": {"flavour": tm.flavour, "version": tm.version_string, "strongly_typed": True},
        "target": target,
        "profiles": [{"axes": {k: list(v) for k, v in p.items()}, "shapes": r} for p, r in zip(parsed, resolved, strict=True)],
        "builder": {"workspace_mb": workspace_mb, "opt_level": opt_level, "tf32": bool(tf32) if tf32_flag is not None
                    else "no TF32 flag in this TensorRT", "timing_cache": cache_info},
        "io_tensors": engine_info["io_tensors"] if engine_info["available"] else network_info["io_tensors"],
        "layers_source": "engine inspector" if engine_info["available"] else "network definition (engine not "
                                                                              "deserializable here)",
        "engine_inspection": {"available": engine_info["available"], "reason": engine_info.get("reason")},
        "layer_summary": summarize_layers(network_info["layers"]),
        "layers": engine_info["layers"] if engine_info["available"] else network_info["layers"],
        "precision_check": precision_check,
        "build_seconds": round(build_s, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "package_version": __version__,
        "runs_on": ("a GPU TensorRT-RTX supports (compute capability " + target["compute_capability"] + "; not "
                    "H100/H200)") if tm.is_rtx else "the GPU it was built on (same TensorRT version)",
    }
    # The report first: killed before the engine is renamed into place, the report still records this request, so the
    # same command rebuilds without --force (and the runtime refuses the mismatched engine meanwhile).
    atomic_write_json(report_path, report)
    atomic_write_bytes(out_path, blob)
    logger.info("built %s with %s in %.1f s (%s, %d profiles)", out_path, tm.describe(), build_s, precision,
                len(resolved))
    return BuildResult(engine_path=out_path, report_path=report_path, report=report, cache_hit=False)


# --- CLI -----------------------------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Build a strongly typed TensorRT (or TensorRT-RTX) engine from an exported ONNX graph, with "
                    "optimisation profiles, an engine cache and a JSON report at ENGINE.json.",
        add_help=add_help,
    )
    parser.add_argument("onnx", help="model.onnx, cnn.onnx or bilstm.onnx from `python -m export.to_onnx`")
    parser.add_argument("--out", required=True,
                        help="engine file (.engine or .plan); the report is OUT.json. An existing file there is "
                             "replaced only if it is this request's cached engine, or with --force")
    parser.add_argument(
        "--profile", action="append", default=None, metavar="batch=MIN:OPT:MAX,time=MIN:OPT:MAX",
        help="optimisation profile over the batch and time axes (mapped onto frames/features/lengths); repeat for "
             f"several. Default: {' and '.join(SPEC.default_profiles)}",
    )
    parser.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "tensorrt_rtx"],
                        help="TensorRT flavour (default: auto = full TensorRT if installed, else TensorRT-RTX)")
    parser.add_argument("--timing-cache", default=None, help="timing cache file (.cache) to load and save")
    parser.add_argument("--workspace-mb", type=int, default=None, help="workspace memory limit in MiB")
    parser.add_argument("--opt-level", type=int, default=None, help="builder optimisation level 0..5")
    parser.add_argument("--compute-capability", default=None,
                        help="TensorRT-RTX target, e.g. 8.6, 8.9, 12.0 (default: TensorRT-RTX's own default)")
    parser.add_argument("--tf32", action="store_true",
                        help="let float32 layers use TF32 tensor cores (TensorRT's default; off here so float32 "
                             "layers stay float32)")
    parser.add_argument("--rebuild", action="store_true", help="build even if the cached engine at --out matches")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing file at --out (and OUT.json) that is not this request's cached "
                             "engine: an engine of another graph, other profiles or options, or any other file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from runtime.trt_compat import TrtNotAvailableError

    try:
        result = build_engine(args.onnx, args.out, profiles=args.profile, backend=args.backend,
                              timing_cache=args.timing_cache, workspace_mb=args.workspace_mb,
                              opt_level=args.opt_level, compute_capability=args.compute_capability, tf32=args.tf32,
                              rebuild=args.rebuild, force=args.force)
    except TrtNotAvailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ValueError as e:  # bad options, outputs and graphs, failed builds: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = result.report
    if result.cache_hit:
        print(f"engine cache hit: {result.engine_path} already matches this request (key {r['cache_key'][:16]}); "
              "not rebuilt (use --rebuild to rebuild)")
    else:
        print(f"built {result.engine_path} ({r['engine_bytes'] / 2**20:.1f} MiB) with {r['trt']['flavour']} "
              f"{r['trt']['version']} in {r['build_seconds']:.1f} s")
    print(f"precision {r['precision']} (check: {r['precision_check']})")
    for t in r["io_tensors"]:
        print(f"  {t['mode']:<6} {t['name']:<14} {t['dtype']:<6} {t['shape']}")
    if not r["engine_inspection"]["available"]:
        print(f"note: engine not deserialized here ({r['engine_inspection']['reason'][:200]}); running it needs "
              f"{r['runs_on']}")
    print(f"report {result.report_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
