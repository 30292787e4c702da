"""Build a TensorRT engine from one of the exported ONNX graphs (full TensorRT 10.x/11.x or TensorRT for RTX).

* The flavour is auto-detected (``--backend auto``: full TensorRT first, then TensorRT-RTX) through
  :mod:`runtime.trt_compat`; the build-only version glue is :mod:`export.trt_build`; everything else is shared.
  The build's steps are in :mod:`export.engine_build`.
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
import logging
import sys
from typing import Optional

from export.engine_build import BuildOptions, BuildResult, build_and_write, cached_result, prepare_request
from export.spec import SPEC

logger = logging.getLogger(__name__)

# --- building a usable TensorRT here at all -----------------------------------------------------------------


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
    from export.trt_build import create_network
    from runtime.trt_compat import BUILD_FLAVOURS, TrtNotAvailableError, import_trt, make_logger

    try:
        tm = import_trt(backend, order=BUILD_FLAVOURS)
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


# --- build ---------------------------------------------------------------------------------------------------------


def build_engine(onnx_path, out_path, *, profiles=None, backend: str = "auto", timing_cache=None,
                 workspace_mb: Optional[int] = None, opt_level: Optional[int] = None,
                 compute_capability: Optional[str] = None, tf32: bool = False, version_compatible: bool = False,
                 exclude_lean_runtime: bool = False, rebuild: bool = False, force: bool = False) -> BuildResult:
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
        version_compatible (bool): full TensorRT only: build with ``BuilderFlag.VERSION_COMPATIBLE``, a plan the
            TensorRT lean runtime (the ``trt-lean`` extra) and later TensorRT releases of the same major version can
            run, with a copy of the lean runtime inside. Refused on TensorRT-RTX, which has no such plans. Recorded in
            the report (``trt.version_compatible``). Defaults to False.
        exclude_lean_runtime (bool): with ``version_compatible``: also ``BuilderFlag.EXCLUDE_LEAN_RUNTIME``, a
            smaller plan without the lean runtime copy, which then runs only on this very TensorRT version (full or
            lean). Recorded in the report (``trt.exclude_lean_runtime``). Defaults to False.
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
        EngineBuildError: other bad options (``version_compatible`` on TensorRT-RTX, ``exclude_lean_runtime``
            alone, the lean runtime as ``backend``), an ONNX graph that differs from the digest its export_report.json
            records, or a failed build (with TensorRT's own error messages).
        runtime._io.OutputPathError: ``out_path`` (or its report or ``timing_cache``) has another suffix, is a folder
            or not writable, or is an existing file that is not this request's engine and ``force`` is False.
    """
    options = BuildOptions(workspace_mb=workspace_mb, opt_level=opt_level, compute_capability=compute_capability,
                           tf32=tf32, timing_cache=timing_cache, version_compatible=version_compatible,
                           exclude_lean_runtime=exclude_lean_runtime)
    req = prepare_request(onnx_path, out_path, profiles, backend, options, rebuild, force)
    return cached_result(req, rebuild, force) or build_and_write(req)


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
    parser.add_argument("--version-compatible", action="store_true",
                        help="full TensorRT only: a version-compatible plan (BuilderFlag.VERSION_COMPATIBLE), which "
                             "the TensorRT lean runtime (pip install 'cnn-bilstm-deploy[trt-lean]') and later "
                             "TensorRT releases of the same major version run; refused on TensorRT-RTX")
    parser.add_argument("--exclude-lean-runtime", action="store_true",
                        help="with --version-compatible: leave the lean runtime copy out of the plan "
                             "(BuilderFlag.EXCLUDE_LEAN_RUNTIME); smaller, but it then runs only on this TensorRT "
                             "version")
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
                              version_compatible=args.version_compatible,
                              exclude_lean_runtime=args.exclude_lean_runtime, rebuild=args.rebuild, force=args.force)
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
    if r["trt"].get("version_compatible"):
        print(f"version-compatible{' (lean runtime excluded)' if r['trt'].get('exclude_lean_runtime') else ''}: "
              f"runs on {r['runs_on']}")
    for t in r["io_tensors"]:
        print(f"  {t['mode']:<6} {t['name']:<14} {t['dtype']:<6} {t['shape']}")
    if not r["engine_inspection"]["available"]:
        print(f"note: engine not deserialized here ({r['engine_inspection']['reason'][:200]}); running it needs "
              f"{r['runs_on']}")
    print(f"report {result.report_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
