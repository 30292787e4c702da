"""The engine cache of :func:`export.to_trt.build_engine` and the guard on its outputs.

A key over the ONNX bytes, profiles, precision, flavour and version, target and builder options is stored in the
engine's report (``ENGINE.json``); an unchanged request reuses the engine. An existing file at ``--out`` is replaced
only when its report records this very request (the cached engine, or one a killed build of the same request left),
or with ``--force``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from runtime._io import OutputPathError, check_output_file, remove_stale_temporaries, sha256_bytes

CACHE_SCHEMA = 1
ENGINE_SUFFIXES = (".engine", ".plan")
TIMING_CACHE_SUFFIXES = (".cache",)


def build_target(tm, compute_capability: Optional[str]) -> dict:
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


def cache_key(**parts) -> str:
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())


def check_output_paths(out_path: Path, report_path: Path, timing_cache) -> None:
    """Before any work: suffixes, no folder where a file goes, writable folders; stale temporaries of killed runs
    removed. Whether an existing file may be replaced is decided once the request is known (:func:`check_replace`).
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


def check_replace(out_path: Path, report_path: Path, key: str, request: dict, force: bool) -> Optional[dict]:
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
