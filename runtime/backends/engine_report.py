"""A TensorRT engine's JSON report (``ENGINE + ".json"``, written by ``python -m export.to_trt``), read and checked
before the engine is deserialized: the engine file's size and sha256, then the TensorRT flavour, version and GPU it
was built for. Needs no GPU and no TensorRT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

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


def check_engine_compat(report: dict, flavour: str, version: str, device: Optional[dict]) -> None:
    """Refuse an engine built by another TensorRT flavour/version or for another GPU, before deserializing it.

    Args:
        report (dict): the engine report.
        flavour (str): installed flavour, "tensorrt" or "tensorrt_rtx".
        version (str): installed version, e.g. "10.13.0.35".
        device (dict | None): {"name", "compute_capability"} of the GPU to run on; None skips the GPU check.

    Raises:
        RuntimeInputError: the mismatch, what the engine needs and how to rebuild.
    """
    trt_info = report.get("trt") or {}
    built_flavour, built_version = trt_info.get("flavour"), trt_info.get("version")
    rebuild = "rebuild it on this machine with `python -m export.to_trt MODEL.onnx --out ENGINE`"
    if built_flavour and built_flavour != flavour:
        raise RuntimeInputError(f"the engine was built by {built_flavour} {built_version}, but this runtime has "
                                f"{flavour} {version}; engines only load in the flavour that built them: {rebuild}")
    if built_version and not _same_version(built_version, version):
        raise RuntimeInputError(f"the engine was built by {built_flavour or 'TensorRT'} {built_version}, but "
                                f"{flavour} {version} is installed; plans are tied to the TensorRT version that built "
                                f"them: {rebuild} (or install {built_flavour or 'tensorrt'}=={built_version})")
    target = report.get("target") or {}
    want_cc = str(target.get("compute_capability", "unknown")).strip().lower()
    # "current" (TensorRT-RTX: the build machine's GPU), "default" and "unknown" name no fixed capability to compare.
    if device is None or want_cc in ("unknown", "default", "current", "none", ""):
        return
    have_cc = str(device.get("compute_capability"))
    if want_cc != have_cc:
        built_for = target.get("name") or f"compute capability {want_cc}"
        raise RuntimeInputError(f"the engine was built for {built_for} (compute capability {want_cc}), but this GPU is "
                                f"{device.get('name')} (compute capability {have_cc}); {rebuild}")


def _same_version(a: str, b: str) -> bool:
    """Whether two TensorRT version strings name the same release (compared as text when one does not parse)."""
    try:
        return parse_version(a) == parse_version(b)
    except ValueError:
        return str(a).strip() == str(b).strip()
