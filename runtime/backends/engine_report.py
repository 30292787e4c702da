"""A TensorRT engine's JSON report (``ENGINE + ".json"``, written by ``python -m export.to_trt``), read and checked
before the engine is deserialized: the engine file's size and sha256, then the TensorRT flavour and version (and
whether the plan is version-compatible, which the lean runtime needs), then the GPU it was built for. Needs no GPU and
no TensorRT, except the GPU check, which needs the GPU's compute capability."""

from __future__ import annotations

import json
from pathlib import Path

from .._io import sha256_file
from ..errors import RuntimeInputError
from ..trt_compat import parse_version


def report_path_for(engine_path: Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (docs/ARCHITECTURE.md)."""
    return Path(str(engine_path) + ".json")


def read_report(engine_path: Path) -> dict:
    """Load the engine's JSON report.

    Raises:
        RuntimeInputError: missing, unreadable or not a JSON object.
    """
    path = report_path_for(engine_path)
    if not path.is_file():
        raise RuntimeInputError(f"{engine_path} has no build report at {path.name}; the runtime checks it before "
                                "loading an engine. Rebuild with `python -m export.to_trt MODEL.onnx --out ENGINE`, "
                                "which writes both")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RuntimeInputError(f"{path} is not a readable JSON report: {e}") from e
    if not isinstance(report, dict) or "metadata" not in report:
        raise RuntimeInputError(f"{path} is not an engine report of this package (no 'metadata' key)")
    return report


def check_engine_file(engine_path: Path, report: dict) -> None:
    """Compare the engine's size and sha256 with the report (a truncated, altered or swapped engine fails here).

    Done before anything else reads the report's contents or the engine: a report copied beside another file
    describes an engine that is not there. Needs no GPU and no TensorRT.

    Raises:
        RuntimeInputError: the engine is missing, the report records no size and sha256 (not written by
            ``python -m export.to_trt``), or they differ.
    """
    engine_path = Path(engine_path)
    rebuild = "rebuild it with `python -m export.to_trt MODEL.onnx --out ENGINE`, which writes both"
    if not engine_path.is_file():
        raise RuntimeInputError(f"{engine_path} does not exist (or is not a file) beside its report; {rebuild}")
    want, want_sha = report.get("engine_bytes"), report.get("engine_sha256")
    if want is None or not want_sha:
        raise RuntimeInputError(f"{report_path_for(engine_path)} records no engine size and sha256, so {engine_path} "
                                f"cannot be checked against it (not a report of export.to_trt); {rebuild}")
    size = engine_path.stat().st_size
    if not isinstance(want, int) or want != size:
        raise RuntimeInputError(f"{engine_path} is {size} bytes but its report says {want}: the file is truncated, "
                                f"damaged or not the engine the report describes; {rebuild}")
    if sha256_file(engine_path) != want_sha:
        raise RuntimeInputError(f"{engine_path} does not match the sha256 in its report: the file is damaged or was "
                                f"replaced; {rebuild}")


def runtime_flavours(report: dict) -> tuple:
    """The flavours that may load this engine, in the order ``trt_backend="auto"`` tries them.

    An engine of full TensorRT: full TensorRT, then the lean runtime (which runs it when it is version-compatible and
    otherwise says how to build one, see :func:`check_engine_runtime`); of TensorRT-RTX: TensorRT-RTX only. A report
    that names no known flavour: every flavour.
    """
    from ..trt_compat import FLAVOURS

    built_by = (report.get("trt") or {}).get("flavour")
    if built_by == "tensorrt":
        return ("tensorrt", "tensorrt_lean_bindings")
    return (built_by,) if built_by in FLAVOURS else FLAVOURS


def plan_holds_host_code(report: dict) -> bool:
    """Whether the plan embeds a lean runtime (version-compatible, lean runtime not excluded): TensorRT deserializes
    such a plan only with ``Runtime.engine_host_code_allowed`` set, since the plan's own code then runs."""
    trt_info = report.get("trt") or {}
    return bool(trt_info.get("version_compatible")) and not trt_info.get("exclude_lean_runtime")


def check_engine_runtime(report: dict, flavour: str, version: str) -> None:
    """Refuse an engine this TensorRT flavour and version cannot load, before a GPU or TensorRT is touched.

    Plans load in the flavour and version that built them; a version-compatible plan of full TensorRT (``trt``
    records ``version_compatible``) also loads in a later TensorRT of the same major version and in the TensorRT lean
    runtime, of exactly its version when the plan excludes the lean runtime (``exclude_lean_runtime``). The lean
    runtime loads nothing else.

    Args:
        report (dict): the engine report.
        flavour (str): installed flavour, one of :data:`runtime.trt_compat.FLAVOURS`.
        version (str): installed version, e.g. "10.13.0.35".

    Raises:
        RuntimeInputError: the mismatch, what the engine needs and how to rebuild.
    """
    trt_info = report.get("trt") or {}
    built_flavour, built_version = trt_info.get("flavour"), trt_info.get("version")
    compatible = bool(trt_info.get("version_compatible"))
    excluded = bool(trt_info.get("exclude_lean_runtime"))
    rebuild = "rebuild it on this machine with `python -m export.to_trt MODEL.onnx --out ENGINE`"
    if flavour == "tensorrt_lean_bindings":
        if built_flavour != "tensorrt" or not compatible:
            built = f"{built_flavour} {built_version}" if built_flavour else "an unknown TensorRT"
            raise RuntimeInputError(
                f"the TensorRT lean runtime {version} runs only version-compatible engines of full TensorRT, and this "
                f"engine (built by {built}) is not one: build one with full TensorRT on a GPU machine, "
                "`python -m export.to_trt MODEL.onnx --out ENGINE --version-compatible` (add --exclude-lean-runtime "
                "for a smaller plan that needs this very lean runtime version), or install the flavour that built it")
        built_flavour = "tensorrt"  # a version-compatible plan of full TensorRT: the version rules below apply
    elif built_flavour and built_flavour != flavour:
        raise RuntimeInputError(f"the engine was built by {built_flavour} {built_version}, but this runtime has "
                                f"{flavour} {version}; engines only load in the flavour that built them: {rebuild}")
    if not built_version or _same_version(built_version, version):
        return
    if compatible and not excluded and _later_same_major(built_version, version):
        return  # a version-compatible plan with its lean runtime inside runs on later releases of its major version
    if compatible:
        need = (f"exactly {built_version} (its plan excludes the lean runtime)" if excluded else
                f"{built_version} or a later {built_version.split('.')[0]}.x")
        raise RuntimeInputError(f"the engine is a version-compatible plan of TensorRT {built_version}, which needs "
                                f"{need}, but {flavour} {version} is installed: install a matching version, or "
                                "rebuild it with `python -m export.to_trt MODEL.onnx --out ENGINE --version-compatible`")
    raise RuntimeInputError(f"the engine was built by {built_flavour or 'TensorRT'} {built_version}, but "
                            f"{flavour} {version} is installed; plans are tied to the TensorRT version that built "
                            f"them: {rebuild} (or install {built_flavour or 'tensorrt'}=={built_version})")


def check_engine_gpu(report: dict, device: dict) -> None:
    """Refuse an engine built for another GPU (compute capability), once the GPU to run on is known.

    Args:
        report (dict): the engine report.
        device (dict): {"name", "compute_capability"} of the GPU to run on.

    Raises:
        RuntimeInputError: the GPU the engine needs and how to rebuild.
    """
    target = report.get("target") or {}
    want_cc = str(target.get("compute_capability", "unknown")).strip().lower()
    # "current" (TensorRT-RTX: the build machine's GPU), "default" and "unknown" name no fixed capability to compare.
    if want_cc in ("unknown", "default", "current", "none", ""):
        return
    have_cc = str(device.get("compute_capability"))
    if want_cc != have_cc:
        built_for = target.get("name") or f"compute capability {want_cc}"
        raise RuntimeInputError(f"the engine was built for {built_for} (compute capability {want_cc}), but this GPU is "
                                f"{device.get('name')} (compute capability {have_cc}); rebuild it on this machine "
                                "with `python -m export.to_trt MODEL.onnx --out ENGINE`")


def _later_same_major(built: str, installed: str) -> bool:
    """Whether ``installed`` is a later release of ``built``'s major version (False when either does not parse)."""
    try:
        b, i = parse_version(built), parse_version(installed)
    except ValueError:
        return False
    return b[0] == i[0] and i > b


def _same_version(a: str, b: str) -> bool:
    """Whether two TensorRT version strings name the same release (compared as text when one does not parse)."""
    try:
        return parse_version(a) == parse_version(b)
    except ValueError:
        return str(a).strip() == str(b).strip()
