"""TensorRT glue that only building an engine needs, for full TensorRT 10.x/11.x and TensorRT-RTX alike.

The runtime's half (importing a flavour, its version, the logger, dtype names) is :mod:`runtime.trt_compat`. The
differences hidden here:

* strong typing: TensorRT 10.12+ takes the opt-in ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT 11.x and
  TensorRT-RTX are strongly typed always (the flag is deprecated and ignored there, but passing it is harmless).
  The weak-typing FP16 flags are never used: FP16 comes from the ONNX graph (see ``export/spec.py``);
* the target compute capability, which only TensorRT-RTX takes (ahead-of-time builds, even without a GPU);
* timing caches, which TensorRT-RTX 1.2+ ignores;
* the engine inspector JSON, whose I/O section is ``"Bindings"`` (names) in 10.x and ``"I/O Tensors"`` (objects) in
  11.x and TensorRT-RTX, and whose per-tensor ``"Format/Datatype"`` string became separate ``"Format"`` and
  ``"DataType"`` fields.
"""

from __future__ import annotations

import json
import re
from typing import Optional

from runtime.trt_compat import TrtModule

# Canonical dtype names for what the engine inspector prints (10.x embeds them in "Format/Datatype" strings).
_INSPECTOR_DTYPES = (
    ("FP32", "FLOAT"), ("Float", "FLOAT"), ("FP16", "HALF"), ("Half", "HALF"), ("BF16", "BF16"), ("Int64", "INT64"),
    ("INT64", "INT64"), ("Int32", "INT32"), ("INT32", "INT32"), ("Int8", "INT8"), ("INT8", "INT8"), ("FP8", "FP8"),
    ("Bool", "BOOL"), ("BOOL", "BOOL"), ("UInt8", "UINT8"),
)


class TrtCompatError(ValueError):
    """A TensorRT option this flavour or version cannot honour (for example a compute capability on full TensorRT)."""


def network_creation_flags(tm: TrtModule) -> int:
    """Flags for ``builder.create_network`` that give a strongly typed network on every supported version.

    TensorRT 10.x: ``1 << STRONGLY_TYPED`` (opt-in; required so FP16 comes from the graph, because the weak-typing
    FP16 flag is deprecated in 10.12 and removed in 11.0). TensorRT 11.x and TensorRT-RTX: strongly typed always; the
    flag is deprecated/ignored there but still accepted, so it is passed when it exists.

    Raises:
        TrtCompatError: a full TensorRT older than 10.12 (the FP16 flag's deprecation; strongly typed FP16 LSTMs
            before it are not worth relying on).
    """
    trt = tm.trt
    if not tm.is_rtx and tuple(tm.version[:2]) < (10, 12):
        raise TrtCompatError(
            f"{tm.describe()} is too old: this package needs TensorRT >= 10.12 (strongly typed networks) or 11.x, "
            "or TensorRT-RTX"
        )
    flag_enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly = getattr(flag_enum, "STRONGLY_TYPED", None) if flag_enum is not None else None
    if strongly is None:
        if tm.is_rtx or tm.major >= 11:
            return 0  # strongly typed by default; the flag was removed
        raise TrtCompatError(f"{tm.describe()} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    return 1 << int(strongly)


def create_network(tm: TrtModule, builder):
    """``builder.create_network`` with :func:`network_creation_flags`, checked to be strongly typed.

    Raises:
        TrtCompatError: the network reports it is not strongly typed (FP16 would silently be lost).
    """
    network = builder.create_network(network_creation_flags(tm))
    if not is_strongly_typed(tm, network):
        raise TrtCompatError(f"{tm.describe()} created a network that is not strongly typed")
    return network


def is_strongly_typed(tm: TrtModule, network) -> bool:
    """Whether ``network`` is strongly typed (True on versions where strong typing is the only mode)."""
    flag_enum = getattr(tm.trt, "NetworkDefinitionCreationFlag", None)
    strongly = getattr(flag_enum, "STRONGLY_TYPED", None) if flag_enum is not None else None
    if strongly is None or not hasattr(network, "get_flag"):
        return tm.is_rtx or tm.major >= 11
    return bool(network.get_flag(strongly))


def compute_capability_choices(tm: TrtModule) -> list[str]:
    """Compute capabilities TensorRT-RTX can target, as "8.6"-style strings ([] for full TensorRT)."""
    enum = getattr(tm.trt, "ComputeCapability", None)
    if not tm.is_rtx or enum is None:
        return []
    out = []
    for name in dir(enum):
        m = re.fullmatch(r"SM(\d+)(\d)", name)
        if m:
            out.append(f"{int(m.group(1))}.{m.group(2)}")
    return sorted(out, key=lambda s: tuple(int(x) for x in s.split(".")))


def set_compute_capability(tm: TrtModule, config, capability: Optional[str]) -> Optional[str]:
    """Point a TensorRT-RTX builder config at one compute capability ("8.6", "8.9", "12.0", ... or "current").

    Args:
        tm (TrtModule): the flavour.
        config: the ``IBuilderConfig``.
        capability (str | None): None keeps the flavour's default (full TensorRT: the build GPU; TensorRT-RTX:
            its own default).

    Returns:
        str | None: the capability set, or None when left at the default.

    Raises:
        TrtCompatError: a capability for full TensorRT (it always builds for the GPU it runs on), or one
            TensorRT-RTX does not know (the message lists the valid ones).
    """
    if capability is None:
        return None
    capability = str(capability).strip()
    if not tm.is_rtx:
        raise TrtCompatError(
            f"--compute-capability {capability} is a TensorRT-RTX option; {tm.describe()} builds for the GPU it runs on"
        )
    enum = tm.trt.ComputeCapability
    if capability.lower() == "current":
        member = enum.CURRENT
    else:
        name = "SM" + capability.replace(".", "")
        member = getattr(enum, name, None) if re.fullmatch(r"\d+\.\d", capability) else None
        if member is None:
            raise TrtCompatError(
                f"unknown compute capability {capability!r} for {tm.describe()}; valid choices: "
                f"{', '.join(compute_capability_choices(tm) + ['current'])}"
            )
    config.num_compute_capabilities = 1
    config.set_compute_capability(member, 0)
    return capability


def version_compatible_flags(tm: TrtModule, version_compatible: bool, exclude_lean_runtime: bool) -> list:
    """The builder flags of a version-compatible plan, checked before any work (full TensorRT only).

    ``BuilderFlag.VERSION_COMPATIBLE`` makes a plan that the TensorRT lean runtime, and later TensorRT releases of the
    same major version, can run; it embeds a copy of the lean runtime unless ``EXCLUDE_LEAN_RUNTIME`` is also set
    (a smaller plan that then needs the lean runtime of exactly the building version).

    Returns:
        list: the flags to set, in order (VERSION_COMPATIBLE first: TensorRT accepts EXCLUDE_LEAN_RUNTIME only after
        it); [] without ``version_compatible``.

    Raises:
        TrtCompatError: ``exclude_lean_runtime`` without ``version_compatible``; TensorRT-RTX, which has no
            version-compatible plans; a TensorRT without the flags.
    """
    if exclude_lean_runtime and not version_compatible:
        raise TrtCompatError("--exclude-lean-runtime needs --version-compatible (it leaves the lean runtime out of a "
                             "version-compatible plan)")
    if not version_compatible:
        return []
    if tm.is_rtx:
        # The enum member exists in tensorrt_rtx, but a build with it fails looking for a lean runtime library that
        # TensorRT-RTX does not ship (checked with tensorrt_rtx 1.7).
        raise TrtCompatError(f"--version-compatible is a full TensorRT option: {tm.describe()} has no "
                             "version-compatible plans (a TensorRT-RTX engine loads only in the TensorRT-RTX release "
                             "that built it, and the lean runtime cannot run it); build with full TensorRT "
                             "(--backend tensorrt) for the lean runtime, or drop --version-compatible")
    names = ["VERSION_COMPATIBLE"] + (["EXCLUDE_LEAN_RUNTIME"] if exclude_lean_runtime else [])
    flags = [getattr(tm.trt.BuilderFlag, name, None) for name in names]
    missing = [n for n, f in zip(names, flags, strict=True) if f is None]
    if missing:
        raise TrtCompatError(f"{tm.describe()} has no BuilderFlag.{missing[0]}")
    return flags


def has_weak_typing_fp16(tm: TrtModule) -> bool:
    """Whether this version still has ``BuilderFlag.FP16`` (10.x). Reported only: this package never sets it."""
    return hasattr(tm.trt.BuilderFlag, "FP16")


def timing_cache_supported(tm: TrtModule) -> bool:
    """False for TensorRT-RTX >= 1.2, where timing-cache calls are documented no-ops (and warn); True otherwise."""
    return not (tm.is_rtx and tuple(tm.version[:2]) >= (1, 2))


# Layer types the ONNX parser emits for an ONNX LSTM (an ILoop with recurrences over T).
LOOP_LAYER_TYPES = ("LOOP", "RECURRENCE", "ITERATOR", "LOOP_OUTPUT", "TRIP_LIMIT", "LOOP_BOUNDARY")


# --- engine inspection ---------------------------------------------------------------------------------------------


def _inspector_dtype(fields: dict) -> Optional[str]:
    text = fields.get("DataType") or fields.get("Format/Datatype") or fields.get("Format") or ""
    for token, canonical in _INSPECTOR_DTYPES:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9])", str(text)):
            return canonical
    return None


def normalize_engine_information(tm_or_major, info: str | dict) -> dict:
    """Parse the engine inspector's JSON into one schema for TensorRT 10.x, 11.x and TensorRT-RTX.

    Args:
        tm_or_major (TrtModule | int): the flavour (or a major version, for tests); only used to name the source.
        info (str | dict): ``inspector.get_engine_information(LayerInformationFormat.JSON)``.

    Returns:
        dict: ``{"io_tensors": [{"name", "mode", "dtype", "shape"}], "layers": [{"name", "type", "inputs",
        "outputs"}]}``; each layer input/output is ``{"name", "dtype", "format"}``. Fields the version does not report
        are None (10.x "Bindings" give names only). Layers only reported by name (without DETAILED verbosity) come
        back as ``{"name": ..., "type": None, ...}``.
    """
    data = json.loads(info) if isinstance(info, (str, bytes)) else dict(info)
    io = []
    if "I/O Tensors" in data:  # 11.x / TensorRT-RTX
        for t in data["I/O Tensors"]:
            io.append({
                "name": t.get("Name"),
                "mode": (t.get("IOMode") or "").upper() or None,
                "dtype": _inspector_dtype(t),
                "shape": t.get("Dimensions"),
            })
    elif "Bindings" in data:  # 10.x: a flat list of names
        io = [{"name": n, "mode": None, "dtype": None, "shape": None} for n in data["Bindings"]]
    layers = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):
            layers.append({"name": layer, "type": None, "inputs": [], "outputs": []})
            continue

        def tensors(key, layer=layer):
            return [
                {
                    "name": t.get("Name"),
                    "dtype": _inspector_dtype(t),
                    "format": t.get("Format") if "DataType" in t else t.get("Format/Datatype"),
                }
                for t in layer.get(key, [])
            ]

        layers.append({
            "name": layer.get("Name"),
            "type": layer.get("LayerType"),
            "inputs": tensors("Inputs"),
            "outputs": tensors("Outputs"),
        })
    return {"io_tensors": io, "layers": layers}
